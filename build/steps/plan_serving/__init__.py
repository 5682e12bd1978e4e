"""`plan_serving`: how the chosen engine is served, measured on the build's traffic profile.

Runs after the runtime is chosen and before validate, so validate measures exactly the engine that is served.
Buckets: the engine is timed with and without candidate length buckets (interleaved, the same calls with lengths
changing call to call, at batch 1 and 4); buckets are kept only when they are faster by `min_gain`. Threads and
instances: every layout that fits the cores is timed for batch-1 latency and for throughput at the load test's
concurrency (instances.py). engine.json records both choices, with both figures and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from engineforge import progress
from engineforge.engines import runtime_info
from engineforge.engines.buckets import NO_BUCKETS, bucketing_problem, candidate_buckets
from engineforge.engines.registry import MODEL_ONNX
from engineforge.engines.timing import measure_profile_latencies
from engineforge.engines.traffic import TrafficProfile, profile_from_texts
from engineforge.machine import available_cores

from ...config import ONNX_GRAPH, STAGE_PLAN_SERVING, BuildConfig, StepConfig, require
from ...context import BuildContext
from ...step_output import StepOutput
from ...step_registry import register_step
from .instances import choose_layout, measure_layouts

AUTO, OFF, FIXED = "auto", "off", "fixed"
# Steps after which the engine is not an ONNX graph served on the CPU (TensorRT plans are timed on their GPU).
_NOT_CPU_ONNX = ("compile", "bnb_4bit")


@dataclass(frozen=True)
class PlanServingConfig(StepConfig):
    step_type: ClassVar[str] = "plan_serving"
    stage: ClassVar[int] = STAGE_PLAN_SERVING
    # Texts come from the build's traffic profile (eval data until the build carries its own): none are required,
    # so that the profile's source stays the build's choice; without any, nothing is measured (see plan_serving).
    requires = frozenset({ONNX_GRAPH})

    # "auto": time candidate length buckets against none and keep the faster; "off": never pad.
    buckets: str = AUTO
    # "auto": measure threads x instances on the cores; "fixed": keep the build's intra_op_threads (serving then
    # derives instances as cores // threads).
    threads: str = AUTO
    # Buckets must save at least this fraction of ms per request to be kept (timing noise here is a few %).
    min_gain: float = 0.05
    # A layout may lose at most this fraction of batch-1 p50 against the best one to be chosen for throughput.
    max_latency_loss: float = 0.10
    # Concurrent callers the throughput is measured at (the load test's default concurrency).
    concurrency: int = 4
    # Calls per batch size (buckets) and per layout (batch-1 latency); seconds of throughput per layout.
    calls: int = 40
    seconds_per_layout: float = 1.0
    # Bucket comparisons, engines alternating which goes first; the median gain decides: one comparison on a
    # shared 2-core machine read +1.3 % for the demo engine where three others read +7 to +13 %.
    rounds: int = 3

    def __post_init__(self) -> None:
        require(self.buckets in (AUTO, OFF), f"plan_serving.buckets={self.buckets!r}: use \"auto\" (measure) or "
                                             "\"off\" (never pad)")
        require(self.threads in (AUTO, FIXED), f"plan_serving.threads={self.threads!r}: use \"auto\" (measure) or "
                                               "\"fixed\" (keep intra_op_threads)")
        require(0 <= self.min_gain < 1, f"plan_serving.min_gain={self.min_gain}: give a fraction in [0, 1), e.g. 0.05")
        require(0 <= self.max_latency_loss < 1, f"plan_serving.max_latency_loss={self.max_latency_loss}: give a "
                                                "fraction in [0, 1), e.g. 0.1")
        require(self.concurrency >= 1, f"plan_serving.concurrency={self.concurrency}: give callers >= 1, e.g. 4")
        require(self.calls >= 10, f"plan_serving.calls={self.calls}: give >= 10 calls, e.g. 40")
        require(self.rounds >= 1, f"plan_serving.rounds={self.rounds}: give rounds >= 1, e.g. 3")
        require(self.seconds_per_layout > 0, f"plan_serving.seconds_per_layout={self.seconds_per_layout}: give "
                                             "seconds > 0, e.g. 1.0")

    def check_in(self, build: BuildConfig) -> None:
        other = next((s.step_type for s in build.steps if s.step_type in _NOT_CPU_ONNX), None)
        require(other is None, f"plan_serving times an ONNX engine on the CPU, but '{other}' makes an engine "
                               f"served elsewhere: drop 'plan_serving' (or '{other}')")


def traffic_profile(ctx: BuildContext) -> TrafficProfile | None:
    """The build's traffic profile; the eval texts' until the build carries one of its own; None without texts."""
    profile = getattr(ctx, "traffic_profile", None)
    if profile is not None or not ctx.eval_examples:
        return profile
    return profile_from_texts(ctx.tokenizer, ctx.eval_texts(ctx.eval_examples), ctx.config.max_sequence_length,
                              "eval data")


def bucket_refusal(ctx: BuildContext, config: PlanServingConfig) -> str:
    """Why this engine is not bucketed before any timing ("" when buckets may be tried)."""
    if config.buckets == OFF:
        return "buckets = \"off\" in the recipe"
    info = runtime_info(ctx.runtime)
    if info.bucketing == NO_BUCKETS or info.model_kind != MODEL_ONNX:
        return f"runtime {ctx.runtime} cannot pad to length buckets"
    return bucketing_problem(ctx.onnx_path)


def bucket_decision(per_batch: dict[int, tuple[float, float]],
                    min_gain: float) -> tuple[dict[int, float], bool, int]:
    """(gain per batch size, keep, max_batch) from {batch: (ms unpadded, ms with buckets)}: kept when they save at
    least `min_gain` at the smallest batch size; max_batch is the last size from there on where they still do (0 when
    that is the largest: every call is padded)."""
    gains = {b: round(1 - padded / none, 4) for b, (none, padded) in per_batch.items()}
    sizes = sorted(gains)
    keep = bool(sizes) and gains[sizes[0]] >= min_gain
    up_to = 0
    for size in sizes:
        if gains[size] < min_gain:
            break
        up_to = size
    return gains, keep, 0 if not keep or up_to == sizes[-1] else up_to


def plan_buckets(ctx: BuildContext, config: PlanServingConfig, profile: TrafficProfile) -> dict[str, Any]:
    """{"buckets": kept, "max_batch", "candidates", "ms_per_call": {batch: {"none", "buckets"}}, "gain", "reason"}.

    Judged per batch size: a shape change costs most at batch 1 (it is most of a short call), while at the batches
    formed under load the extra padding can cost more than it saves. Buckets are kept when they save at least
    min_gain at the smallest batch size, for the batch sizes up to the last one where they still do."""
    if reason := bucket_refusal(ctx, config):
        return {"buckets": [], "max_batch": 0, "reason": reason}
    candidates = candidate_buckets(profile)
    engines = {"none": ctx.open_engine(length_buckets=()),
               "buckets": ctx.open_engine(length_buckets=candidates, bucket_max_batch=0)}
    rounds = []
    for r in range(config.rounds):
        order = dict(list(engines.items())[:: 1 if r % 2 == 0 else -1])
        timed = measure_profile_latencies(order, ctx.vocab_size, profile, calls=config.calls, seed=r)
        rounds.append({b: (timed["none"].per_batch[b].median_ms, timed["buckets"].per_batch[b].median_ms)
                       for b in profile.batch_sizes})
    per_batch = {b: sorted((rnd[b] for rnd in rounds), key=lambda pair: pair[1] / pair[0])[len(rounds) // 2]
                 for b in profile.batch_sizes}  # each batch size's median comparison
    gains, keep, max_batch = bucket_decision(per_batch, config.min_gain)
    sizes = sorted(gains)
    figures = ", ".join(f"batch {b}: {per_batch[b][1]:.3f} vs {per_batch[b][0]:.3f} ms per call ({gains[b]:+.1%})"
                        for b in sizes)
    scope = "every call" if max_batch == 0 else f"calls of up to {max_batch} row(s)"
    verdict = f"kept for {scope}" if keep else "not kept"
    reason = (f"{verdict}: {list(candidates)} against none, {figures}, the median of {config.rounds} comparisons; "
              f"kept where they save >= {config.min_gain:.0%}, on lengths changing every call")
    return {"buckets": list(candidates) if keep else [], "max_batch": max_batch, "candidates": list(candidates),
            "ms_per_call": {str(b): {"none": n, "buckets": p} for b, (n, p) in per_batch.items()},
            "gain": {str(b): g for b, g in gains.items()}, "reason": reason,
            "rounds": [{str(b): {"none": n, "buckets": p} for b, (n, p) in rnd.items()} for rnd in rounds]}


def plan_layout(ctx: BuildContext, config: PlanServingConfig, profile: TrafficProfile,
                buckets: tuple[int, ...], max_batch: int = 0) -> dict[str, Any] | None:
    """The serving_plan's instances and threads, or None when the recipe fixes the threads."""
    if config.threads == FIXED:
        return None
    cores = available_cores()
    rows = measure_layouts(lambda threads: ctx.open_engine(length_buckets=buckets, threads=threads,
                                                           bucket_max_batch=max_batch), profile,
                           ctx.vocab_size, cores, config.concurrency, config.seconds_per_layout, config.calls)
    chosen, why = choose_layout(rows, config.max_latency_loss, config.concurrency)
    return {"instances": chosen["instances"], "intra_op_threads": chosen["intra_op_threads"], "cores": cores,
            "concurrency": config.concurrency, "why": f"measured on the traffic profile ({profile.describe()}): {why}",
            "candidates": rows}


@register_step(PlanServingConfig)
def plan_serving(ctx: BuildContext, config: PlanServingConfig) -> StepOutput:
    profile = traffic_profile(ctx)
    if profile is None:  # the engine serves as before: no buckets, the build's threads, instances from the cores
        return StepOutput(details={"skipped": "no texts to time the engine on: pass --eval-data FILE.jsonl"})
    progress.info(f"  plan_serving: {profile.describe()}")
    buckets_plan = plan_buckets(ctx, config, profile)
    buckets = tuple(buckets_plan["buckets"])
    progress.info(f"  plan_serving: length buckets {buckets_plan['reason']}")
    layout = plan_layout(ctx, config, profile, buckets, buckets_plan["max_batch"])
    details: dict[str, Any] = {"length_buckets": list(buckets), "buckets_reason": buckets_plan["reason"]}
    if "ms_per_call" in buckets_plan:
        details["bucket_ms_per_call"] = buckets_plan["ms_per_call"]
        details["bucket_max_batch"] = buckets_plan["max_batch"]
    if layout is not None:
        progress.info(f"  plan_serving: {layout['why']}")
        details |= {"instances": layout["instances"], "intra_op_threads": layout["intra_op_threads"],
                    "layouts": [f"{r['instances']} x {r['intra_op_threads']}: {r['requests_per_s']:.0f} req/s, "
                                f"batch-1 p50 {r['batch1_p50_ms']:.2f} ms" for r in layout["candidates"]]}
    return StepOutput(length_buckets=buckets, bucket_max_batch=buckets_plan["max_batch"],
                      intra_op_threads=layout["intra_op_threads"] if layout else None,
                      serving_plan={**(layout or {}), "length_buckets": buckets_plan}, details=details)
