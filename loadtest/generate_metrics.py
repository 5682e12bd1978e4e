"""Streaming-generation metrics (`--mode generate`): a pure function of `GenerationRecord`s (no clocks, no I/O), as
vLLM's benchmark_serving computes them, with GenAI-Perf's definitions. DEFINITIONS is written into every report.

Which records: those of the measurement window, as for every load test (closed loop: completed in it; open loop:
scheduled in it). Latency-like statistics use successful requests only (a failed stream's timings describe the
failure); failures are counted (`errors`, by kind) and their finish reason is "error" unless the server sent one.
`t0` is when the request was sent (closed loop) or scheduled to be sent (open loop: no coordinated omission, the
generator's lag counts against the server as in the existing open loop).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engineforge.stats import percentiles

from .generate_records import GenerationRecord
from .records import MEASURE

STAT_PERCENTILES: tuple[float, ...] = (50, 90, 99, 99.9)
DEFINITIONS: dict[str, str] = {
    "ttft": "time to first token: arrival of the first response that carried >= 1 token minus t0",
    "itl": "inter-token latency per request (GenAI-Perf): (end - first token) / (output tokens - 1); requests with "
           "fewer than 2 output tokens have none",
    "piece_gap": "time between consecutive token-carrying responses of one request (every gap of every request)",
    "e2e": "end-to-end request latency: arrival of the final response minus t0",
    "t0": "when the request was sent (closed loop) or scheduled to be sent (open loop)",
    "output_tokens": "the final response's COMPLETION_TOKENS, or the TOKEN_IDS streamed when it has none",
    "prompt_tokens": "the final response's PROMPT_TOKENS (the server's tokenizer); absent when not sent",
    "output_tokens_per_s": "output tokens of the successful requests completed in the window / window seconds",
    "requests_per_s": "successful requests completed in the window / window seconds",
    "percentiles": "numpy 'linear' (the p-th percentile sits at 0-based position (n - 1) * p / 100, interpolated), "
                   "as GenAI-Perf computes them; mean, min and max are exact",
    "finish_reasons": "the final response's FINISH_REASON; 'error' for a failed request that got none, 'not "
                      "reported' for a successful one whose final response carried none",
    "scope": "latency statistics and token distributions use successful requests only; failures are counted",
}


@dataclass(frozen=True)
class GenerationMetrics:
    duration_s: float
    requests: int  # records of the window, ok or not
    completed: int
    errors: int
    error_rate: float | None
    answered: int  # successful requests completed inside the window: the throughputs' numerator
    requests_per_s: float
    output_tokens_per_s: float
    output_tokens_total: int  # of the answered requests
    ttft_ms: dict[str, float] | None
    itl_ms: dict[str, float] | None
    piece_gap_ms: dict[str, float] | None
    e2e_ms: dict[str, float] | None
    prompt_tokens: dict[str, float] | None
    output_tokens: dict[str, float] | None
    finish_reasons: dict[str, int] = field(default_factory=dict)
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    error_examples: tuple[str, ...] = ()
    no_token_requests: int = 0  # successful, but not one token came back (no TTFT, no ITL)
    one_token_requests: int = 0  # successful with exactly one output token (TTFT, no ITL)
    token_count_mismatch: int = 0  # successful requests whose COMPLETION_TOKENS differs from the tokens streamed
    latency_from: str = "send"  # or "scheduled send" (open loop)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_examples"] = list(self.error_examples)
        return data


def summarize(values: Sequence[float]) -> dict[str, float] | None:
    """count, mean, min, max and p50/p90/p99/p99.9 of `values` (None when empty: undefined, never 0)."""
    if len(values) == 0:
        return None
    arr = np.asarray(values, dtype=np.float64)
    stats = {"count": int(arr.size), "mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}
    for p, v in zip(STAT_PERCENTILES, percentiles(arr, STAT_PERCENTILES), strict=True):
        stats[percentile_key(p)] = v
    return stats


def percentile_key(p: float) -> str:
    return f"p{p:g}".replace(".", "_")  # p50, p99_9


def generation_metrics(records: Iterable[Any], duration_s: float, *, from_schedule: bool = False,
                       measured_only: bool = True, max_error_examples: int = 3) -> GenerationMetrics:
    """Summarize the generation `records` of a window of `duration_s` seconds (see module docstring and
    DEFINITIONS). Non-generation records (a plain RequestResult) count as requests but carry no tokens."""
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0 to compute throughput, got {duration_s!r}")
    records = list(records)
    rows = [r for r in records if not measured_only or r.phase == MEASURE]
    ok = [r for r in rows if r.ok and isinstance(r, GenerationRecord)]
    failed = [r for r in rows if not r.ok]
    answered = [r for r in records if r.ok and isinstance(r, GenerationRecord)
                and (not measured_only or (r.completed_phase or r.phase) == MEASURE)]

    ttft, itl, e2e = (_samples(ok, what, from_schedule) for what in ("ttft", "itl", "e2e"))
    gaps = [b - a for r in ok for a, b in zip(r.piece_s, r.piece_s[1:], strict=False)]
    examples: list[str] = []
    for message in (r.error or "(no message)" for r in failed):
        if message not in examples and len(examples) < max_error_examples:
            examples.append(message)
    reasons = Counter(getattr(r, "finish_reason", None) or ("error" if not r.ok else "not reported") for r in rows)
    output_total = sum(r.output_tokens for r in answered)
    return GenerationMetrics(
        duration_s=float(duration_s), requests=len(rows), completed=len(ok), errors=len(failed),
        error_rate=len(failed) / len(rows) if rows else None, answered=len(answered),
        requests_per_s=len(answered) / duration_s, output_tokens_per_s=output_total / duration_s,
        output_tokens_total=output_total,
        ttft_ms=_ms(ttft), itl_ms=_ms(itl), piece_gap_ms=_ms(gaps), e2e_ms=_ms(e2e),
        prompt_tokens=summarize([r.prompt_tokens for r in ok if r.prompt_tokens is not None]),
        output_tokens=summarize([r.output_tokens for r in ok]),
        finish_reasons=dict(sorted(reasons.items())),
        errors_by_kind=dict(sorted(Counter(r.error_kind or "unknown" for r in failed).items())),
        error_examples=tuple(examples),
        no_token_requests=sum(r.first_token_s is None for r in ok),
        one_token_requests=sum(r.output_tokens == 1 for r in ok),
        token_count_mismatch=sum(r.output_tokens != r.streamed_tokens for r in ok),
        latency_from="scheduled send" if from_schedule else "send",
    )


def _ms(seconds: list[float]) -> dict[str, float] | None:
    return summarize([s * 1000.0 for s in seconds])


def request_value_s(r: GenerationRecord, what: str, from_schedule: bool = False) -> float | None:
    """One request's 'ttft', 'itl' or 'e2e' in seconds (DEFINITIONS); None where undefined (no token, < 2 tokens)."""
    t0 = r.scheduled_s if from_schedule and r.scheduled_s is not None else r.start_s
    first = r.first_token_s
    if what == "e2e":
        return r.end_s - t0
    if what == "ttft":
        return None if first is None else first - t0
    if what == "itl":
        return None if first is None or r.output_tokens < 2 else (r.end_s - first) / (r.output_tokens - 1)
    raise ValueError(f"unknown per-request metric {what!r}: use ttft, itl or e2e")


def _samples(records: Iterable[GenerationRecord], what: str, from_schedule: bool) -> list[float]:
    values = (request_value_s(r, what, from_schedule) for r in records)
    return [v for v in values if v is not None]


def distribution_ms(records: Iterable[Any], what: str, *, from_schedule: bool = False) -> list[float]:
    """Raw samples (ms) of 'ttft', 'itl' or 'e2e' over the window's successful requests, for plots."""
    ok = [r for r in records if r.phase == MEASURE and r.ok and isinstance(r, GenerationRecord)]
    return [1000.0 * v for v in _samples(ok, what, from_schedule)]
