"""Select-runtime step: time the engine in each CPU runtime on this machine, keep the fastest within budget.

Each candidate runtime must load the graph (OpenVINO cannot run ORT's QAttention/dynamic-int8 ops, for
example), reproduce the fp32 reference within the accuracy budget of the build's validate step, and is
then timed at the configured shape. The decision table goes into the build report; if no runtime fits,
the build fails with that table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from engineforge import progress
from engineforge.errors import AccuracyBudgetExceeded, ConfigError, DataError

from .config import STAGE_COMPILE, StepConfig, ValidateConfig, register_config_type
from .pipeline import BuildContext, register_step
from .runtimes import RUNTIMES, make_runner, measure_latencies, runtime_logits
from .validate import check_budget, compare_logits


@register_config_type
@dataclass(frozen=True)
class SelectRuntimeConfig(StepConfig):
    step_type: ClassVar[str] = "select_runtime"
    stage: ClassVar[int] = STAGE_COMPILE

    candidates: tuple[str, ...] = ("onnxruntime", "openvino")
    # Latency is judged where the product is judged: one request of 128 tokens.
    batch: int = 1
    seq_len: int = 128
    iterations: int = 50
    # How many eval examples decide whether a runtime is accurate enough (None = all).
    max_examples: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))
        unknown = sorted(set(self.candidates) - set(RUNTIMES))
        if not self.candidates or unknown:
            raise ConfigError(f"select_runtime.candidates {list(self.candidates)}: choose from {list(RUNTIMES)}")
        if self.batch < 1 or self.seq_len < 1 or self.iterations < 5:
            raise ConfigError("select_runtime: batch and seq_len must be >= 1 and iterations >= 5")


def _try_runtime(ctx: BuildContext, runtime: str, config: SelectRuntimeConfig, texts: list[str],
                 reference: Any, label_ids: list[int] | None, budget: ValidateConfig) -> dict[str, Any]:
    row: dict[str, Any] = {"runtime": runtime}
    threads = ctx.config.intra_op_threads
    try:
        logits = runtime_logits(runtime, ctx.onnx_path, ctx.tokenizer, texts, ctx.config.max_sequence_length, threads)
    except Exception as exc:  # a runtime that cannot load or run the graph is simply not a candidate
        # Runtimes put the cause last (OpenVINO: "No conversion rule found for operations: ...").
        lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip()] or [""]
        row.update(status="cannot run", reason=f"{type(exc).__name__}: {lines[-1][:200]}")
        return row
    result = compare_logits(reference, logits, label_ids, texts)
    row.update(accuracy=result.engine_accuracy, agreement=result.agreement)
    try:
        check_budget(result, budget)
    except AccuracyBudgetExceeded as exc:
        row.update(status="outside budget", reason=str(exc).split(". Worst")[0])
        return row
    row["status"] = "ok"
    progress.info(f"  {runtime}: within budget, agreement {result.agreement:.2%}")
    return row


def _time_fitting(ctx: BuildContext, fitting: list[dict[str, Any]], config: SelectRuntimeConfig) -> None:
    """Time the runtimes that fit the budget against each other, interleaved (fair on a busy machine)."""
    threads = ctx.config.intra_op_threads
    runners = {r["runtime"]: make_runner(r["runtime"], ctx.onnx_path, threads) for r in fitting}
    latencies = measure_latencies(runners, config.batch, config.seq_len, config.iterations)
    for row in fitting:
        latency = latencies[row["runtime"]]
        row.update(median_ms=latency.median_ms, p99_ms=latency.p99_ms)
        progress.info(f"  {row['runtime']}: {latency.median_ms:.2f} ms median at {config.batch}x{config.seq_len}")


@register_step(SelectRuntimeConfig)
def select_runtime(ctx: BuildContext, config: SelectRuntimeConfig) -> dict[str, Any]:
    assert ctx.onnx_path is not None, "select_runtime runs after export"
    examples = ctx.eval_examples[: config.max_examples] if config.max_examples else ctx.eval_examples
    if not examples:
        raise DataError("select_runtime compares runtimes on eval data: pass --eval-data FILE.jsonl")
    budget = ctx.config.step(ValidateConfig) or ValidateConfig()
    assert isinstance(budget, ValidateConfig)
    texts = [e.text for e in examples]
    label_ids = [ctx.labels.index(e.label) for e in examples] if all(e.label for e in examples) else None
    reference = ctx.reference_logits(texts)
    rows = [_try_runtime(ctx, runtime, config, texts, reference, label_ids, budget) for runtime in config.candidates]
    fitting = [r for r in rows if r["status"] == "ok"]
    if not fitting:
        tried = "; ".join(f"{r['runtime']}: {r['status']} ({r.get('reason', '')})" for r in rows)
        raise AccuracyBudgetExceeded(f"no runtime can serve {ctx.onnx_path.name} within the budget. Tried: {tried}")
    _time_fitting(ctx, fitting, config)
    best = min(fitting, key=lambda r: r["median_ms"])
    ctx.runtime = best["runtime"]
    return {"chosen": best["runtime"], "median_ms": best["median_ms"], "candidates": rows}
