"""`prune`: structured pruning of attention heads and FFN neurons that really shrinks the matrices.

Heads: the same number is kept in every layer (which ones: per layer, by importance). ONNX Runtime's
Attention fusion takes one num_heads for the whole graph and, for HF's `view(..., -1, head_dim)`
reshape, applies it to every layer without checking — a layer with another head count is fused into
a numerically wrong Attention node (measured: logits off by 0.02–0.07). FFN neurons have no such
constraint: they are ranked globally (layer-normalised scores) with a per-layer floor.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from engineforge import progress
from engineforge.engines.engine_spec import TOKEN_CLASSIFICATION
from engineforge.engines.registry import REFERENCE_RUNTIME
from engineforge.errors import ConfigError

from ...config import MODEL, STAGE_PRUNE, STANDARD_LAYOUT, TORCH_MODEL, TRAINING_TEXT, Blocker, StepConfig
from ...context import AttentionShape, BuildContext
from ...step_output import StepOutput
from ...step_registry import register_step
from ...teacher_student import make_batches, training_examples, with_teacher_logits
from .prune_importance import Importance, measure_importance, normalize_per_layer, summarize
from .prune_structure import (
    allocate,
    allocate_uniform,
    apply_pruning,
    attention_fusion_shape,
    count_parameters,
    ffn_per_layer,
    heads_per_layer,
    keep_count,
)


@dataclass(frozen=True)
class PruneConfig(StepConfig):
    """Remove the least important attention heads and FFN neurons (importance from gradients on train text)."""

    step_type: ClassVar[str] = "prune"
    stage: ClassVar[int] = STAGE_PRUNE
    requires = frozenset({TORCH_MODEL, TRAINING_TEXT})
    removes = frozenset({STANDARD_LAYOUT})
    removes_reason = ("left a per-layer pruned layout, which from_pretrained (how the bnb engine is saved and "
                      "served) cannot rebuild")

    head_sparsity: float = 0.5  # fraction of heads removed (same count in every layer)
    ffn_sparsity: float = 0.5  # fraction of FFN intermediate neurons removed (global ranking)
    # Pick the least sparsity (up to the two above) whose measured ORT fp32 latency meets this target; None = prune
    # exactly head_sparsity / ffn_sparsity. The latency is ms per request on the build's traffic profile (lengths
    # changing call to call, batch 1 and 4, as select_runtime ranks), or with latency_on = "fixed" the median at
    # batch 1 x seq 128; both are measured and reported.
    target_latency_ms: float | None = None
    latency_on: str = "profile"
    min_heads_per_layer: int = 1
    min_ffn_per_layer: int = 1
    normalize_scores: bool = True  # L2-normalise FFN scores per layer before the global ranking
    num_batches: int = 16
    batch_size: int = 16
    max_length: int = 128
    latency_steps: int = 8  # sparsity levels tried by the latency search

    def __post_init__(self) -> None:
        for name in ("head_sparsity", "ffn_sparsity"):
            value = getattr(self, name)
            if not 0.0 <= value <= 0.9:
                raise ConfigError(f"prune.{name}={value}: give the fraction removed in [0, 0.9], e.g. 0.5")
        if self.target_latency_ms is not None and self.target_latency_ms <= 0:
            raise ConfigError(f"prune.target_latency_ms={self.target_latency_ms}: give milliseconds > 0 or omit it")
        if self.latency_on not in ("profile", "fixed"):
            raise ConfigError(f"prune.latency_on={self.latency_on!r}: use 'profile' (ms per request on the build's "
                              "traffic profile, the default) or 'fixed' (the median at batch 1 x seq 128)")
        if self.min_heads_per_layer < 1 or self.min_ffn_per_layer < 1:
            raise ConfigError("prune.min_heads_per_layer and prune.min_ffn_per_layer must be >= 1 "
                              "(a layer is never left empty)")
        for name in ("num_batches", "batch_size", "latency_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"prune.{name} must be >= 1, got {getattr(self, name)}")
        if not 8 <= self.max_length <= 8192:
            raise ConfigError(f"prune.max_length={self.max_length}: use 8..8192 (128 is typical)")

    def task_problem(self, task: str) -> str:
        if task == TOKEN_CLASSIFICATION:
            return "pruning of token classifiers (per-token importance) is not built yet"
        return ""

    def model_blockers(self, family: Any, task: str | None) -> list[Blocker]:
        """Heads and FFN neurons are blocked apart (one line when the reason is shared). Where what is left still
        prunes something, the fix sets the blocked sparsity to 0; otherwise it drops the step."""
        blocked: dict[str, list[str]] = {}  # reason -> the kinds it blocks ("head", "FFN")
        changes: dict[str, float] = {}
        if family is not None:
            for kind, option, supported, why in (
                    ("head", "head_sparsity", family.supports_head_pruning(), family.no_head_pruning),
                    ("FFN", "ffn_sparsity", family.supports_ffn_pruning(), family.no_ffn_pruning)):
                if getattr(self, option) > 0 and not supported:
                    blocked.setdefault(why or "no layout for it", []).append(kind)
                    changes[option] = 0.0
        task_reason = self.task_problem(task) if task else ""
        left = dataclasses.replace(self, **changes)
        fix = None if task_reason or left.head_sparsity == left.ffn_sparsity == 0 else tuple(changes.items())
        found = [Blocker(self.step_type, f"cannot run on {family.name} checkpoints: {' and '.join(kinds)} pruning: "
                         f"{why}", MODEL, changes=fix) for why, kinds in blocked.items()]
        if task_reason:
            found.append(Blocker(self.step_type, f"cannot build a {task} model: {task_reason}", MODEL))
        return found


@dataclass(frozen=True)
class Plan:
    heads: list[list[int]]
    ffn: list[list[int]]
    head_sparsity: float
    ffn_sparsity: float


def plan_pruning(importance: Importance, config: PruneConfig, head_sparsity: float, ffn_sparsity: float) -> Plan:
    """Kept head and neuron indices per layer for the given sparsities."""
    n_heads = len(importance.heads[0])
    per_layer = keep_count(n_heads, head_sparsity, min(config.min_heads_per_layer, n_heads))
    heads = allocate_uniform(importance.heads, per_layer)
    ffn_scores = normalize_per_layer(importance.ffn) if config.normalize_scores else importance.ffn
    total = sum(len(s) for s in ffn_scores)
    floor = sum(min(config.min_ffn_per_layer, len(s)) for s in ffn_scores)
    ffn = allocate(ffn_scores, keep_count(total, ffn_sparsity, floor), config.min_ffn_per_layer)
    return Plan(heads, ffn, 1 - per_layer / n_heads, 1 - sum(map(len, ffn)) / total)


def pruned_copy(model: Any, plan: Plan) -> Any:
    pruned = copy.deepcopy(model)
    apply_pruning(pruned, plan.heads, plan.ffn)
    return pruned


FIXED_MS, PROFILE_MS = "median_ms_1x128", "profile_ms_per_request"


def measure_latency_ms(ctx: BuildContext, model: Any, seq_len: int = 128, runs: int = 30) -> dict[str, float]:
    """ORT fp32 latency (BERT-fused graph, build threads) — what the engine will run: the median at batch 1 x
    `seq_len`, and ms per request on the build's traffic profile when it has one."""
    import tempfile
    from pathlib import Path

    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    from engineforge.engines import load_engine, measure_latency, model_input_names
    from engineforge.engines.timing import measure_profile_latencies

    from ...onnx_export import write_onnx

    names = model_input_names(ctx.tokenizer)
    args = tuple(torch.ones(1, seq_len, dtype=torch.long) for _ in names)
    with tempfile.TemporaryDirectory() as tmp:
        raw, fused = Path(tmp) / "m.onnx", Path(tmp) / "m.opt.onnx"
        write_onnx(model, names, args, raw, opset=17)
        num_heads, hidden = attention_fusion_shape(model)
        optimize_model(str(raw), model_type="bert", num_heads=num_heads, hidden_size=hidden, opt_level=1,
                       use_gpu=False).save_model_to_file(str(fused))
        engine = load_engine(fused, REFERENCE_RUNTIME, ctx.config.intra_op_threads)
        figures = {FIXED_MS: measure_latency(engine, ctx.vocab_size, batch=1, seq_len=seq_len,
                                             iterations=runs).median_ms}
        if ctx.traffic_profile is not None:
            timed = measure_profile_latencies({"ort": engine}, ctx.vocab_size, ctx.traffic_profile, calls=runs)
            figures[PROFILE_MS] = timed["ort"].ms_per_request
        return figures


def latency_figure(ctx: BuildContext, config: PruneConfig) -> tuple[str, str]:
    """(the measured figure the target is compared with, how to say it)."""
    if config.latency_on == "profile" and ctx.traffic_profile is not None:
        return PROFILE_MS, "ms per request on the traffic profile"
    return FIXED_MS, "ms at 1x128"


def search_for_latency(ctx: BuildContext, importance: Importance, config: PruneConfig) -> tuple[Plan, dict[str, Any]]:
    """Binary search over sparsity levels t·(head, ffn sparsity), t = k/steps: least pruning meeting the target."""
    target = config.target_latency_ms
    if target is None:
        raise ConfigError("prune's latency search needs prune.target_latency_ms")
    key, unit = latency_figure(ctx, config)
    measured: dict[int, dict[str, float]] = {}

    def latency(k: int) -> float:
        if k not in measured:
            t = k / config.latency_steps
            plan = plan_pruning(importance, config, t * config.head_sparsity, t * config.ffn_sparsity)
            measured[k] = measure_latency_ms(ctx, pruned_copy(ctx.model, plan))
            progress.info(f"  prune: sparsity level {t:.2f} (heads {plan.head_sparsity:.2f}, ffn "
                          f"{plan.ffn_sparsity:.2f}) -> {measured[k][key]:.2f} {unit}")
        return measured[k][key]

    if latency(config.latency_steps) > target:
        raise ConfigError(
            f"prune.target_latency_ms={target:g} is not met even at head_sparsity={config.head_sparsity}, "
            f"ffn_sparsity={config.ffn_sparsity} ({measured[config.latency_steps][key]:.2f} {unit} measured, "
            "fp32): raise the sparsities, relax the target, or rely on a later int8 step for the rest"
        )
    low, high = 0, config.latency_steps  # invariant: level `high` meets the target
    if latency(0) <= target:
        high = 0
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if latency(mid) <= target else (mid, high)
    t = high / config.latency_steps
    plan = plan_pruning(importance, config, t * config.head_sparsity, t * config.ffn_sparsity)
    table = [{"level": round(k / config.latency_steps, 3), **{n: round(v, 2) for n, v in figures.items()}}
             for k, figures in sorted(measured.items())]
    return plan, {"target_latency_ms": target, "latency_on": key, "chosen_level": round(t, 3),
                  "latency_ms": round(measured[high][key], 2), "measurements": table,
                  "latency_setup": f"ORT fp32 fused, {unit}, {ctx.config.intra_op_threads} threads"}


@register_step(PruneConfig)
def prune(ctx: BuildContext, config: PruneConfig) -> StepOutput:
    if ctx.model is ctx.reference_model:
        raise ConfigError("prune would modify the fp32 reference model: the runner must give steps a copy")
    examples, source = training_examples(ctx, "prune")
    scored = examples[: config.num_batches * config.batch_size]
    batches = with_teacher_logits(ctx.reference_model, make_batches(ctx, scored, config.batch_size, config.max_length))
    start = time.perf_counter()
    importance = measure_importance(ctx.model, batches)
    scoring_s = time.perf_counter() - start
    params_before = count_parameters(ctx.model)
    encoder_before = count_parameters(ctx.model, encoder_only=True)
    heads_before, ffn_before = heads_per_layer(ctx.model), ffn_per_layer(ctx.model)
    latency: dict[str, Any] = {}
    if config.target_latency_ms is not None:
        plan, latency = search_for_latency(ctx, importance, config)
    else:
        plan = plan_pruning(importance, config, config.head_sparsity, config.ffn_sparsity)
    apply_pruning(ctx.model, plan.heads, plan.ffn)
    ctx.model.eval()
    kept_heads = heads_per_layer(ctx.model)
    params_after = count_parameters(ctx.model)
    # graph_optimize reads the attention shape: ORT fuses Attention only with the pruned head count and width.
    return StepOutput(attention=AttentionShape(*attention_fusion_shape(ctx.model)), details={
        "data": f"{importance.examples} {source} examples in {importance.batches} batches",
        "importance_loss": importance.loss, "scoring_seconds": round(scoring_s, 2),
        "head_sparsity": round(plan.head_sparsity, 4), "ffn_sparsity": round(plan.ffn_sparsity, 4),
        "heads_per_layer_before": heads_before, "heads_per_layer": kept_heads,
        "ffn_per_layer_before": ffn_before, "ffn_per_layer": ffn_per_layer(ctx.model),
        "parameters_before": params_before, "parameters_after": params_after,
        "encoder_parameters_before": encoder_before,
        "encoder_parameters_after": count_parameters(ctx.model, encoder_only=True),
        "parameter_reduction": round(1 - params_after / params_before, 4),
        "head_importance": summarize(importance.heads, plan.heads, with_values=True),
        "ffn_importance": summarize(importance.ffn, plan.ffn, with_values=False),
        **({"latency_search": latency} if latency else {}),
    })
