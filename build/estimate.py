"""How long a ladder of candidates will take, printed before the first one starts.

Distillation dominates a pruning rung (~20 min on the demo-sized model here), and its cost is predictable:
epochs x steps per epoch x seconds per step. The seconds per step are measured on this machine, on the build's
own text: one forward of the fp32 teacher and one training step (forward, backward, AdamW) of the unpruned
model, scaled down by what the rung prunes. Prune's importance passes are timed the same way. The other steps
(export, quantization, runtime selection, validation, TensorRT) get rough allowances: a few seconds each plus
forward passes over the eval and calibration text; the printout says which figures are measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engineforge import progress

from .config import BuildConfig
from .steps import DistillConfig, PruneConfig
from .time_limit import minutes

# Rough allowances for the steps not timed here: seconds, and passes over the eval text (calibration text
# for static_int8's ranges). compile is TensorRT building and timing kernels: minutes, not seconds.
_FIXED_S = {"export": 5, "graph_optimize": 3, "dynamic_int8": 3, "static_int8": 10, "int4_weight_only": 5,
            "bnb_4bit": 10, "select_runtime": 10, "compile": 90, "validate": 2, "publish": 2}
_EVAL_PASSES = {"export": 1, "static_int8": 4, "select_runtime": 2, "validate": 1, "compile": 1}


@dataclass(frozen=True)
class Timing:
    """Seconds per text measured here (fp32 teacher forward; full-size training step), and the text counts."""

    forward_s: float
    train_s: float
    batch: int
    prune_texts: int  # train (else calibration) text: what pruning scores importance on
    distill_texts: int  # that plus the unlabelled text
    eval_texts: int
    calibration_texts: int


def candidate_seconds(steps: Sequence[Any], timing: Timing) -> dict[str, float]:
    """Estimated seconds per step of one candidate (an upper bound for distill: every epoch runs)."""
    prune = next((s for s in steps if isinstance(s, PruneConfig)), None)
    # Attention is ~1/3 of an encoder layer's weights and FFN ~2/3: what a pruned student still computes.
    kept = 1 - (prune.head_sparsity / 3 + 2 * prune.ffn_sparsity / 3) if prune else 1.0
    seconds: dict[str, float] = {}
    for step in steps:
        if isinstance(step, PruneConfig):
            scored = min(step.num_batches * step.batch_size, timing.prune_texts)
            seconds["prune"] = (scored * (timing.train_s + timing.forward_s)
                                + (step.latency_steps * 4.0 if step.target_latency_ms else 0.0))
        elif isinstance(step, DistillConfig):
            seconds["distill"] = _distill_s(step, timing, kept)
        else:
            passes = _EVAL_PASSES.get(step.step_type, 0) * timing.eval_texts
            passes += timing.calibration_texts if step.step_type == "static_int8" else 0
            seconds[step.step_type] = _FIXED_S.get(step.step_type, 5) + passes * timing.forward_s
    return seconds


def distill_split(config: DistillConfig, texts: int) -> tuple[int, int, int]:
    """(texts trained on per epoch, held out, steps per epoch), as the distill step splits its text."""
    held = max(8, round(texts * config.holdout_fraction)) if config.holdout_fraction > 0 and texts >= 16 else 0
    train = (texts - held) * (1 + config.augment_copies)
    return train, held, -(-train // config.batch_size)


def _distill_s(config: DistillConfig, timing: Timing, kept: float) -> float:
    train, held, _ = distill_split(config, timing.distill_texts)
    per_text = timing.train_s * kept + (timing.forward_s if config.hidden_weight > 0 else 0.0)
    per_epoch = train * per_text + held * timing.forward_s * kept  # training, then the held-out check
    # Teacher outputs once for every text, and the student's eval accuracy before and after.
    once = (train + held + 2 * timing.eval_texts) * timing.forward_s
    return config.epochs * per_epoch + once


def measure(config: BuildConfig) -> Timing:
    """Load the checkpoint and time, on the build's own text, the two things distillation repeats."""
    import copy

    import torch

    from engineforge.data import load_examples
    from engineforge.engines import encode, model_input_names

    from .checkpoint import load_checkpoint

    distill = config.step(DistillConfig)
    batch = distill.batch_size if isinstance(distill, DistillConfig) else 16
    hidden = isinstance(distill, DistillConfig) and distill.hidden_weight > 0
    prune_texts = _texts(config.train_data or config.calibration_data, load_examples)
    texts = prune_texts + _texts(config.unlabelled_data, load_examples)
    evals = _texts(config.eval_data, load_examples)
    sample = ((texts or evals or ["a short text"]) * batch)[:batch]
    _, model, tokenizer = load_checkpoint(config.checkpoint, config.task)
    max_length = distill.max_length if isinstance(distill, DistillConfig) else config.max_sequence_length
    inputs = {name: torch.from_numpy(array) for name, array in
              encode(tokenizer, sample, max_length, model_input_names(tokenizer)).items()}
    student = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)

    def forward() -> None:
        with torch.inference_mode():
            model(**inputs, output_hidden_states=hidden)

    def train_step() -> None:
        out = student(**inputs, output_hidden_states=hidden)
        loss = out.logits.float().pow(2).mean()
        if hidden:
            loss = loss + sum(h.float().pow(2).mean() for h in out.hidden_states)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    calibration = _texts(config.calibration_data, load_examples)
    return Timing(forward_s=_median_s(forward) / batch, train_s=_median_s(train_step) / batch, batch=batch,
                  prune_texts=len(prune_texts), distill_texts=len(texts), eval_texts=len(evals),
                  calibration_texts=len(calibration))


def _texts(path: Any, load: Callable[..., list[Any]]) -> list[str]:
    return [e.text for e in load(path)] if path is not None else []


def _median_s(fn: Callable[[], None], runs: int = 3, warmup: int = 2) -> float:
    for _ in range(warmup):  # first calls allocate and pick kernels: measured 5-8x slower than the steady step
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def announce(candidates: Sequence[tuple[str, BuildConfig]]) -> list[float | None]:
    """Measure, print the estimate of every candidate and of the whole ladder; return seconds per candidate
    (None for each when it cannot be estimated: the build itself then reports what is wrong)."""
    try:
        timing = measure(candidates[0][1])
    except Exception as exc:  # an estimate is advice: a checkpoint or data problem is the build's to report
        progress.info(f"time estimate unavailable ({type(exc).__name__}: {str(exc)[:200]})")
        return [None] * len(candidates)
    per_candidate = [candidate_seconds(config.steps, timing) for _, config in candidates]
    totals = [sum(parts.values()) for parts in per_candidate]
    distill = candidates[0][1].step(DistillConfig)
    per_step = ""
    if isinstance(distill, DistillConfig):
        step_s = timing.batch * (timing.train_s + (timing.forward_s if distill.hidden_weight > 0 else 0))
        per_step = f"{step_s:.2f} s per distillation step of {timing.batch} texts (unpruned student + teacher), "
    progress.info(f"time estimate: measured here {per_step}{timing.forward_s * 1000:.1f} ms per text forward; "
                  "export, quantization, runtime selection and compile are rough allowances")
    for index, ((name, config), parts, total) in enumerate(zip(candidates, per_candidate, totals, strict=True), 1):
        progress.info(f"  candidate {index}/{len(candidates)} {name}: ~{minutes(total)} "
                      f"({_parts(config, parts, timing)})")
    if len(candidates) > 1:
        progress.info(f"  whole ladder: ~{minutes(totals[0])} if candidate 1 meets the budget, ~{minutes(sum(totals))} "
                      f"if all {len(candidates)} run")
    return list(totals)


def _parts(config: BuildConfig, parts: dict[str, float], timing: Timing) -> str:
    out = []
    distill = config.step(DistillConfig)
    if "prune" in parts:
        out.append(f"prune {minutes(parts['prune'])}")
    if isinstance(distill, DistillConfig):
        steps = distill_split(distill, timing.distill_texts)[2]
        out.append(f"distill {distill.epochs} epochs x {steps} steps {minutes(parts['distill'])}")
    rest = sum(v for k, v in parts.items() if k not in ("prune", "distill"))
    return ", ".join([*out, f"other steps {minutes(rest)}"])
