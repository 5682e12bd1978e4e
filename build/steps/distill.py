"""`distill`: recover accuracy after pruning by distilling the unpruned fp32 teacher into the student.

Loss per example: (1-alpha)·T²·KL(teacher_T || student_T) + alpha·CE(label); unlabelled text gets the KL
term alone (embedding models: 1 - cosine + MSE to the teacher's embedding), plus (hidden_weight > 0) the
per-token MSE between the student's and teacher's hidden states.
Text is what limits recovery: on the demo model (50 % heads + 50 % FFN pruned) the 480 labelled training
texts alone left the student 2.5 points below fp32 (it fits them and stops generalising), while the same
run with 1 722 unlabelled in-domain texts (--unlabelled-data) came within 0.3 points.
Early stopping watches the student-teacher KL on a held-out slice of the training text (not the eval
file, which the validate step must judge untouched); the best epoch's weights are kept.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from engineforge import progress
from engineforge.data import Example
from engineforge.engines.engine_spec import TOKEN_CLASSIFICATION
from engineforge.errors import ConfigError

from ..config import DISTILLATION_TEXT, STAGE_DISTILL, TORCH_MODEL, StepConfig
from ..context import BuildContext
from ..step_registry import register_step
from ..teacher_student import (
    accuracy,
    agreement_and_kl,
    augment_texts,
    distillation_examples,
    hidden_state_loss,
    kd_loss,
    make_batches,
    with_teacher_logits,
)


@dataclass(frozen=True)
class DistillConfig(StepConfig):
    """Knowledge distillation from the original model (teacher) into the current one (student)."""

    step_type: ClassVar[str] = "distill"
    stage: ClassVar[int] = STAGE_DISTILL
    requires = frozenset({TORCH_MODEL, DISTILLATION_TEXT})
    pointless_without = "prune"  # it recovers what pruning removed: an unpruned student equals its teacher

    epochs: int = 10
    learning_rate: float = 1e-4
    batch_size: int = 16
    max_length: int = 128
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the hard-label cross-entropy where labels exist
    hidden_weight: float = 0.0  # weight of the layer-wise hidden-state MSE to the teacher (0 = logits only)
    patience: int = 3  # epochs without held-out improvement before stopping; 0 = never stop early
    holdout_fraction: float = 0.1  # slice of the training text kept for early stopping
    weight_decay: float = 0.01
    seed: int = 0
    # Unlabelled variants per training text (dropout/swap/splice), distilled on soft labels only.
    augment_copies: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.augment_copies <= 16:
            raise ConfigError(f"distill.augment_copies={self.augment_copies}: use 0..16 (0 = no augmentation)")
        if self.epochs < 1:
            raise ConfigError(f"distill.epochs must be >= 1, got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"distill.learning_rate={self.learning_rate}: use a small positive rate, e.g. 1e-4")
        if self.batch_size < 1:
            raise ConfigError(f"distill.batch_size must be >= 1, got {self.batch_size}")
        if not 8 <= self.max_length <= 8192:
            raise ConfigError(f"distill.max_length={self.max_length}: use 8..8192 (128 is typical)")
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature={self.temperature}: must be > 0 (1-4 is typical)")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"distill.alpha={self.alpha}: give the hard-label weight in [0, 1], e.g. 0.5")
        if self.patience < 0:
            raise ConfigError(f"distill.patience must be >= 0 (0 = no early stopping), got {self.patience}")
        if not 0 <= self.holdout_fraction < 0.5:
            raise ConfigError(f"distill.holdout_fraction={self.holdout_fraction}: use [0, 0.5), e.g. 0.1")
        if self.hidden_weight < 0:
            raise ConfigError(f"distill.hidden_weight must be >= 0 (0 = logits only), got {self.hidden_weight}")
        if self.weight_decay < 0:
            raise ConfigError(f"distill.weight_decay must be >= 0, got {self.weight_decay}")

    def task_problem(self, task: str) -> str:
        if task == TOKEN_CLASSIFICATION:
            return "distillation of token classifiers (per-token KL) is not built yet"
        return ""


def split_holdout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): a seeded shuffle; at least 8 held out when any is asked for."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    if fraction <= 0 or n < 16:
        return order, []
    size = max(8, round(n * fraction))
    return order[size:], order[:size]


_FEW_TEXTS = 1000
_MIN_IMPROVEMENT = 0.02  # relative held-out KL decrease that counts as progress for early stopping


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


@dataclass
class _DistillData:
    """The text one distillation trains on, split, with the teacher's outputs computed once."""

    examples: list[Example]
    source: str
    texts: int  # before augmentation
    train_idx: list[int]
    held_idx: list[int]
    per_example: Any  # the teacher's output per example (logits, or the embedding): reshuffled batches reuse them
    monitor: list[Any]  # batches early stopping watches: the held-out slice, else the training text
    evals: list[Any]  # labelled eval batches: the student's own accuracy before and after


def _prepare(ctx: BuildContext, config: DistillConfig) -> _DistillData:
    import torch

    examples, source = distillation_examples(ctx)
    n_texts = len(examples)
    if n_texts < _FEW_TEXTS:
        progress.info(f"  distill: only {n_texts} texts; a pruned student overfits so few (measured on the "
                      "demo: +2 points with 1700 more) - pass --unlabelled-data FILE with in-domain text")
    torch.manual_seed(config.seed)
    train_idx, held_idx = split_holdout(len(examples), config.holdout_fraction, config.seed)
    if config.augment_copies:  # from the training split only, so the held-out slice stays unseen
        extra = augment_texts([examples[i].text for i in train_idx], config.augment_copies, config.seed)
        train_idx = list(train_idx) + list(range(len(examples), len(examples) + len(extra)))
        examples = examples + [Example(text=t) for t in extra]
    # Teacher logits never change: compute them once (per example for training, so reshuffled batches reuse them).
    teacher = ctx.reference_model
    held = with_teacher_logits(teacher, make_batches(ctx, examples, 64, config.max_length, held_idx))
    evals = make_batches(ctx, ctx.eval_examples, 64, config.max_length)
    train_fixed = with_teacher_logits(teacher, make_batches(ctx, examples, 64, config.max_length, train_idx))
    per_example = torch.empty(len(examples), train_fixed[0].teacher.shape[1])  # labels, or the embedding width
    for batch in train_fixed:
        per_example[list(batch.indices)] = batch.teacher
    return _DistillData(examples, source, n_texts, list(train_idx), held_idx, per_example, held or train_fixed,
                        evals)


class _Training:
    """AdamW with linear warm-up then linear decay (stable on a freshly pruned model), epoch by epoch."""

    def __init__(self, ctx: BuildContext, config: DistillConfig, data: _DistillData) -> None:
        import torch

        self.ctx, self.config, self.data = ctx, config, data
        self.teacher, self.student = ctx.reference_model, ctx.model
        self.steps_per_epoch = -(-len(data.train_idx) // config.batch_size)
        total = self.steps_per_epoch * config.epochs
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=config.learning_rate,
                                           weight_decay=config.weight_decay)
        warmup = max(1, total // 10)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(total - warmup, 1))))
        self.start = time.perf_counter()

    def epoch(self, epoch: int, order: list[int]) -> float:
        """One pass over `order`; the summed loss. Stops at a step boundary once the ladder's deadline passed."""
        import torch

        config, limit = self.config, self.ctx.config.time_limit
        self.student.train()
        loss_sum = 0.0
        batches = make_batches(self.ctx, self.data.examples, config.batch_size, config.max_length, order)
        for step, batch in enumerate(batches, 1):
            if limit is not None and limit.expired():
                where = f"epoch {epoch}/{config.epochs}, step {step}/{self.steps_per_epoch}"
                progress.info(f"  distill: time limit reached; stopping before {where}")
                raise limit.reached(f"during distill, before {where} ({time.perf_counter() - self.start:.0f} s in)")
            out = self.student(**batch.inputs, output_hidden_states=config.hidden_weight > 0)
            loss = kd_loss(out.logits, self.data.per_example[list(batch.indices)], batch.labels, config.temperature,
                           config.alpha, embedding=self.ctx.is_embedding)
            if config.hidden_weight > 0:
                with torch.no_grad():
                    target = self.teacher(**batch.inputs, output_hidden_states=True).hidden_states
                loss = loss + config.hidden_weight * hidden_state_loss(
                    out.hidden_states, target, batch.inputs["attention_mask"])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += float(loss.detach()) * len(batch.labels)
        return loss_sum

    def run(self, before_kl: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(per-epoch history, the best epoch with its weights): every epoch, or until `patience` epochs passed
        without a real held-out improvement."""
        config, data = self.config, self.data
        rng = random.Random(config.seed)
        best = {"kl": before_kl, "epoch": 0, "state": copy.deepcopy(self.student.state_dict())}
        history: list[dict[str, Any]] = []
        stale = 0
        for epoch in range(1, config.epochs + 1):
            order = list(data.train_idx)
            rng.shuffle(order)
            loss_sum = self.epoch(epoch, order)
            stats = agreement_and_kl(self.student, data.monitor)
            history.append({"epoch": epoch, "loss": _sig(loss_sum / len(data.train_idx)),
                            "heldout_kl": _sig(stats["kl"]), "heldout_agreement": round(stats["agreement"], 4)})
            embedding = self.ctx.is_embedding
            measure = "embedding loss" if embedding else "KL"
            agree = f"cosine {stats['agreement']:.4f}" if embedding else f"agreement {stats['agreement']:.1%}"
            progress.info(f"  distill epoch {epoch}/{config.epochs}: loss {loss_sum / len(data.train_idx):.4f}, "
                          f"held-out {measure} {stats['kl']:.4f}, {agree}, {time.perf_counter() - self.start:.1f}s")
            # Any improvement is kept; only a real one (not noise-level) resets the patience counter.
            stale = 0 if stats["kl"] < best["kl"] * (1 - _MIN_IMPROVEMENT) else stale + 1
            if stats["kl"] < best["kl"]:
                best = {"kl": stats["kl"], "epoch": epoch, "state": copy.deepcopy(self.student.state_dict())}
            if stale and config.patience and stale >= config.patience:
                progress.info(f"  distill: no held-out improvement for {stale} epochs, stopping")
                break
        return history, best


@register_step(DistillConfig)
def distill(ctx: BuildContext, config: DistillConfig) -> dict[str, Any]:
    if ctx.model is ctx.reference_model:
        raise ConfigError("distill would train the fp32 reference model: the runner must give steps a copy")
    student = ctx.model
    data = _prepare(ctx, config)
    before = agreement_and_kl(student, data.monitor)
    eval_before = accuracy(student, data.evals)
    training = _Training(ctx, config, data)
    history, best = training.run(before["kl"])
    student.load_state_dict(best["state"])
    student.eval()
    after = agreement_and_kl(student, data.monitor)
    trained, held = len(data.train_idx), len(data.held_idx)
    details: dict[str, Any] = {
        "data": f"{data.texts} texts ({data.source}): {trained} trained on"
                + (f" incl. {trained - data.texts + held} augmented" if config.augment_copies else "")
                + (f", {held} held out" if held else ", none held out (monitoring on the training text)"),
        "texts": data.texts, "trained_on": trained, "held_out": held,
        "epochs_run": len(history), "best_epoch": best["epoch"],
        "train_seconds": round(time.perf_counter() - training.start, 1),
        "kl_before": _sig(before["kl"]), "kl_after": _sig(after["kl"]),
        "agreement_before": round(before["agreement"], 4), "agreement_after": round(after["agreement"], 4),
        "history": history,
    }
    eval_after = accuracy(student, data.evals)
    if eval_before is not None and eval_after is not None:  # labelled eval data: the student's own accuracy
        details["eval_accuracy_before"] = round(100 * eval_before, 2)
        details["eval_accuracy_after"] = round(100 * eval_after, 2)
    return details
