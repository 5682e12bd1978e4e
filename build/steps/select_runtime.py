"""`select_runtime`: time the engine in each CPU runtime on this machine, keep the fastest within budget.

Each candidate runtime must load the graph (OpenVINO cannot run ORT's QAttention/dynamic-int8 ops, for
example) and reproduce the fp32 reference within the build's accuracy budget; those that do are then
timed against each other, interleaved, at the configured shape, opened exactly as they will be served.
The decision table goes into the build report; if no runtime fits, the build fails with that table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from engineforge import progress
from engineforge.engines import Engine, cpu_candidate_names, engine_logits, measure_latencies
from engineforge.errors import AccuracyBudgetExceeded, ConfigError, EngineforgeError

from ..config import EVAL_DATA, ONNX_GRAPH, STAGE_COMPILE, StepConfig
from ..context import BuildContext
from ..step_output import StepOutput
from ..step_registry import register_step


@dataclass(frozen=True)
class SelectRuntimeConfig(StepConfig):
    step_type: ClassVar[str] = "select_runtime"
    stage: ClassVar[int] = STAGE_COMPILE
    requires = frozenset({ONNX_GRAPH, EVAL_DATA})

    # Every runtime registered as a CPU candidate (onnxruntime, openvino).
    candidates: tuple[str, ...] = field(default_factory=cpu_candidate_names)
    # Latency is judged where the product is judged: one request of 128 tokens.
    batch: int = 1
    seq_len: int = 128
    iterations: int = 50
    # How many eval examples decide whether a runtime is accurate enough (None = all).
    max_examples: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))
        unknown = sorted(set(self.candidates) - set(cpu_candidate_names()))
        if not self.candidates or unknown:
            raise ConfigError(f"select_runtime.candidates {list(self.candidates)}: choose from "
                              f"{list(cpu_candidate_names())}")
        if self.batch < 1 or self.seq_len < 1 or self.iterations < 5:
            raise ConfigError("select_runtime: batch and seq_len must be >= 1 and iterations >= 5")


def _try_runtime(ctx: BuildContext, runtime: str, texts: list[str], reference: Any,
                 examples: list[Any]) -> tuple[dict[str, Any], Engine | None]:
    """(decision row, the engine when it fits the budget)."""
    row: dict[str, Any] = {"runtime": runtime}
    try:
        engine = ctx.open_engine(runtime)
        logits = engine_logits(engine, ctx.tokenizer, texts, ctx.config.max_sequence_length)
    except Exception as exc:  # a runtime that cannot load or run the graph is simply not a candidate
        # EngineLoadError names the file and the runtime's own cause; anything else: its type and last line.
        lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip()] or [""]
        row.update(status="cannot run",
                   reason=str(exc) if isinstance(exc, EngineforgeError) else f"{type(exc).__name__}: {lines[-1][:300]}")
        return row, None
    result = ctx.compare(reference, logits, examples, texts)
    row.update(result.figures() | ({"accuracy": result.engine_accuracy} if hasattr(result, "engine_accuracy") else {}))
    problems = ctx.budget.violations(result)
    if problems:
        row.update(status="outside budget", reason="; ".join(problems))
        return row, None
    row["status"] = "ok"
    progress.info(f"  {runtime}: within budget, {result.summary()}")
    return row, engine


@register_step(SelectRuntimeConfig)
def select_runtime(ctx: BuildContext, config: SelectRuntimeConfig) -> StepOutput:
    examples = ctx.eval_examples[: config.max_examples] if config.max_examples else ctx.eval_examples
    texts = ctx.eval_texts(examples)
    reference = ctx.reference_logits(texts)
    tried = [_try_runtime(ctx, runtime, texts, reference, list(examples)) for runtime in config.candidates]
    rows = [row for row, _ in tried]
    fitting = {row["runtime"]: engine for row, engine in tried if engine is not None}
    if not fitting:
        summary = "; ".join(f"{r['runtime']}: {r['status']} ({r.get('reason', '')})" for r in rows)
        raise AccuracyBudgetExceeded(f"no runtime can serve {ctx.onnx_path.name} within the budget. Tried: {summary}",
                                     figures=[row for row in rows if row["status"] == "outside budget"])
    # Interleaved timing of the fitting runtimes against each other (fair on a busy machine).
    latencies = measure_latencies(fitting, ctx.vocab_size, config.batch, config.seq_len, config.iterations)
    for row in rows:
        if row["runtime"] in latencies:
            latency = latencies[row["runtime"]]
            row.update(median_ms=latency.median_ms, p99_ms=latency.p99_ms)
            progress.info(f"  {row['runtime']}: {latency.median_ms:.2f} ms median at {config.batch}x{config.seq_len}")
    best = min((r for r in rows if "median_ms" in r), key=lambda r: r["median_ms"])
    return StepOutput(runtime=best["runtime"],
                      details={"chosen": best["runtime"], "median_ms": best["median_ms"], "candidates": rows})
