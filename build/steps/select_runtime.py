"""`select_runtime`: time the engine in each CPU runtime on this machine, keep the fastest within budget.

Each candidate runtime must load the graph (OpenVINO cannot run ORT's QAttention/dynamic-int8 ops, for
example) and reproduce the fp32 reference within the build's accuracy budget; those that do are then
timed against each other, interleaved, opened exactly as they will be served, and ranked on the build's traffic
profile: lengths drawn from the texts it will serve, changing call to call, at batch 1 and the dynamic batcher's
batch (ms per request). Served text changes shape on nearly every call and OpenVINO's CPU plugin pays about 1 ms per
change, so the runtime fastest at one fixed shape can be the slower one served. One fixed batch x seq_len shape
(1x128) stays as a reference column (`rank_on = "fixed"` ranks on it instead, as builds did before).
With `dynamic_int8`, the plain export quantized by ONNX Runtime's dynamic int8 (int8 weights, activations scaled per
call) joins as one more candidate, judged and timed the same way: which int8 graph is fastest depends on the CPU
(on an AVX2 machine without VNNI, the demo's pruned student ran 2.1 ms per request that way against 3.7-4.3 ms as
static Q/DQ in OpenVINO), so fast-cpu measures it instead of assuming it. Outside the budget, it keeps the fewest
layers fp32 that bring it back (`dynamic_candidate.py`).
The decision table goes into the build report; if no runtime fits, the build fails with that table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from engineforge import progress
from engineforge.engines import Engine, cpu_candidate_names, engine_logits, load_engine, measure_latencies
from engineforge.engines.timing import measure_profile_latencies
from engineforge.errors import AccuracyBudgetExceeded, ConfigError, EngineforgeError

from ..config import EVAL_DATA, ONNX_GRAPH, PLAIN_ONNX, STAGE_COMPILE, Artifact, StepConfig
from ..context import BuildContext
from ..step_output import StepOutput
from ..step_registry import register_step
from .dynamic_candidate import dynamic_candidate

RANK_ON = ("profile", "fixed")
DYNAMIC = "onnxruntime (dynamic int8)"  # the candidate name of the dynamic-int8 graph in ONNX Runtime


@dataclass(frozen=True)
class SelectRuntimeConfig(StepConfig):
    step_type: ClassVar[str] = "select_runtime"
    stage: ClassVar[int] = STAGE_COMPILE
    requires = frozenset({ONNX_GRAPH, EVAL_DATA})
    provides = frozenset({ONNX_GRAPH})  # the graph served: the current one, or its dynamic-int8 quantization

    # Every runtime registered as a CPU candidate (onnxruntime, openvino).
    candidates: tuple[str, ...] = field(default_factory=cpu_candidate_names)
    # The reference shape, timed beside the profile (and ranked on with rank_on = "fixed"): one request of 128 tokens.
    batch: int = 1
    seq_len: int = 128
    # Timed calls per engine at the reference shape, and per batch size of the profile.
    iterations: int = 50
    # "profile": rank on ms per request over the build's traffic profile; "fixed": on the median at batch x seq_len.
    rank_on: str = "profile"
    # How many eval examples decide whether a runtime is accurate enough (None = all).
    max_examples: int | None = None
    # Also try the plain export quantized by ONNX Runtime's dynamic int8 as a candidate (fast-cpu's rungs).
    dynamic_int8: bool = False

    def prerequisites(self) -> frozenset[Artifact]:
        return self.requires | ({PLAIN_ONNX} if self.dynamic_int8 else frozenset())

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))
        unknown = sorted(set(self.candidates) - set(cpu_candidate_names()))
        if not self.candidates or unknown:
            raise ConfigError(f"select_runtime.candidates {list(self.candidates)}: choose from "
                              f"{list(cpu_candidate_names())}")
        if self.batch < 1 or self.seq_len < 1 or self.iterations < 5:
            raise ConfigError("select_runtime: batch and seq_len must be >= 1 and iterations >= 5")
        if self.rank_on not in RANK_ON:
            raise ConfigError(f"select_runtime.rank_on={self.rank_on!r}: use 'profile' (ms per request on the build's "
                              "traffic profile, the default) or 'fixed' (the median at batch x seq_len)")


def _try_runtime(ctx: BuildContext, runtime: str, texts: list[str], reference: Any,
                 examples: list[Any], graph: Any = None) -> tuple[dict[str, Any], Engine | None]:
    """(decision row, the engine when it fits the budget); `graph`: a file other than the current graph."""
    row: dict[str, Any] = {"runtime": runtime} | ({"candidate": DYNAMIC, "graph": graph.name} if graph else {})
    try:
        engine = ctx.open_engine(runtime) if graph is None else load_engine(graph, runtime, ctx.serving_threads)
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
    progress.info(f"  {row.get('candidate', runtime)}: within budget, {result.summary()}")
    return row, engine


@register_step(SelectRuntimeConfig)
def select_runtime(ctx: BuildContext, config: SelectRuntimeConfig) -> StepOutput:
    examples = ctx.eval_examples[: config.max_examples] if config.max_examples else ctx.eval_examples
    texts = ctx.eval_texts(examples)
    reference = ctx.reference_logits(texts)
    tried = [_try_runtime(ctx, runtime, texts, reference, list(examples)) for runtime in config.candidates]
    if config.dynamic_int8:
        graph, fallback = dynamic_candidate(ctx, texts, reference, list(examples))
        row, engine = _try_runtime(ctx, "onnxruntime", texts, reference, list(examples), graph)
        tried.append((row | fallback, engine))
    rows = [row for row, _ in tried]
    fitting = {_name(row): engine for row, engine in tried if engine is not None}
    if not fitting:
        summary = "; ".join(f"{r['runtime']}: {r['status']} ({r.get('reason', '')})" for r in rows)
        raise AccuracyBudgetExceeded(f"no runtime can serve {ctx.onnx_path.name} within the budget. Tried: {summary}",
                                     figures=[row for row in rows if row["status"] == "outside budget"])
    ranked_on = _time_candidates(ctx, config, fitting, rows)
    best = min((r for r in rows if ranked_on in r), key=lambda r: r[ranked_on])
    progress.info(f"  chose {_name(best)}: fastest by {_FIGURES[ranked_on]}")
    dynamic = best.get("candidate") == DYNAMIC
    return StepOutput(runtime=best["runtime"], onnx_path=ctx.work_dir / best["graph"] if dynamic else ctx.onnx_path,
                      precision="int8-dynamic-per-channel" if dynamic else None,
                      details={"chosen": _name(best), "ranked_on": ranked_on,
                               "median_ms": best[FIXED_MS], "profile_ms_per_request": best.get(PROFILE_MS),
                               "candidates": rows})


def _name(row: dict[str, Any]) -> str:
    return row.get("candidate", row["runtime"])


FIXED_MS, PROFILE_MS = "median_ms_1x128", "profile_ms_per_request"
_FIGURES = {PROFILE_MS: "ms per request on the traffic profile", FIXED_MS: "median at the fixed reference shape"}


def _time_candidates(ctx: BuildContext, config: SelectRuntimeConfig, fitting: dict[str, Engine],
                     rows: list[dict[str, Any]]) -> str:
    """Time the fitting runtimes against each other, interleaved (fair on a busy machine), on the traffic profile
    and at the reference shape; fill their rows and return the figure that ranks them. `median_ms_1x128` names the
    reference column whatever batch x seq_len is (the default and every preset's)."""
    fixed = measure_latencies(fitting, ctx.vocab_size, config.batch, config.seq_len, config.iterations)
    profile = ctx.traffic_profile
    timed = measure_profile_latencies(fitting, ctx.vocab_size, profile, calls=config.iterations) if profile else {}
    for row in rows:
        name = _name(row)
        if name not in fixed:
            continue
        row.update({FIXED_MS: fixed[name].median_ms, "p99_ms_1x128": fixed[name].p99_ms})
        line = f"{fixed[name].median_ms:.2f} ms median at {config.batch}x{config.seq_len}"
        if name in timed:
            medians = {str(b): lat.median_ms for b, lat in timed[name].per_batch.items()}
            row.update({PROFILE_MS: timed[name].ms_per_request, "profile_median_ms_by_batch": medians})
            line = (f"{timed[name].ms_per_request:.2f} ms per request on the traffic profile (median per call "
                    + ", ".join(f"{ms:.2f} ms at batch {b}" for b, ms in medians.items()) + f"); {line} (reference)")
        progress.info(f"  {name}: {line}")
    if config.rank_on == "profile" and profile is None:
        progress.info("  no traffic profile (the build has no texts): ranking on the fixed reference shape")
    return PROFILE_MS if config.rank_on == "profile" and profile is not None else FIXED_MS
