"""Aggregate metrics: a pure function of request records (no clocks, no I/O).

Conventions, so numbers from different runs stay comparable:
- `requests` counts every record of the window (closed loop: completed in it; open loop: scheduled in it);
  `completed` the successful ones; `errors` the rest.
- Throughput is perf_analyzer's: successful responses *completed* inside the measurement window, divided by its
  length (`answered` / duration). Failures do not count (goodput: a server that fails fast must not look fast), and
  in open loop neither do requests scheduled in the window but answered after it, so an overloaded server shows
  the rate it kept, not the rate it was offered. `throughput_items_per_s` weights each response by its batch size.
- Latency statistics use successful requests only, since failed calls (refused connection,
  timeout) have latencies that describe the failure, not the model.
- Percentiles come from an HDR histogram (loadtest/histogram.py, the `hdrhistogram` package): the recorded
  sample at rank round(n * p / 100), to 3 significant digits, so p50 of [1, 2, 3, 4] ms is 2 ms (engineforge/
  stats.py's interpolated p50 would be 2.5 ms; it says exactly how the two differ). Mean, min, max and std are
  exact.
- Correctness (texts with expected labels): `checked_items` / `correct_items` over the successful requests that
  were checked, `accuracy` their ratio (None when nothing was checked). Apart from latency and throughput: a
  wrong label is still a served request.
- When nothing succeeded, latency fields are None (undefined, written as null in JSON) and
  throughputs are 0.0; error_rate is None only when there were no requests at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .histogram import percentiles_ms
from .records import MEASURE, RequestResult

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
PERCENTILE_999 = 99.9


@dataclass(frozen=True)
class LoadMetrics:
    duration_s: float
    requests: int
    completed: int
    errors: int
    error_rate: float | None
    throughput_rps: float
    throughput_items_per_s: float
    latency_mean_ms: float | None
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    latency_min_ms: float | None
    latency_max_ms: float | None
    latency_std_ms: float | None
    latency_p999_ms: float | None = None
    # error_kind -> count, e.g. {"timeout": 3}; records without a kind count as "unknown".
    errors_by_kind: Mapping[str, int] = field(default_factory=dict)
    # A few distinct error messages (first seen first) so a report can say what went wrong.
    error_examples: tuple[str, ...] = ()
    checked_items: int = 0
    correct_items: int = 0
    accuracy: float | None = None
    # gRPC status code -> count over the failed calls (failures without a call, e.g. bad outputs, are not here).
    errors_by_status: Mapping[str, int] = field(default_factory=dict)
    answered: int = 0  # successful responses completed inside the window: the throughput's numerator
    reload_retried: int = 0  # successful requests that waited through a model reload (retried)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors_by_kind"] = dict(self.errors_by_kind)
        data["errors_by_status"] = dict(self.errors_by_status)
        data["error_examples"] = list(self.error_examples)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoadMetrics:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["error_examples"] = tuple(known.get("error_examples", ()))
        return cls(**known)


def calculate_metrics(
    records: Iterable[RequestResult],
    duration_s: float,
    *,
    measured_only: bool = True,
    max_error_examples: int = 3,
    from_schedule: bool = False,
) -> LoadMetrics:
    """Summarize `records` observed over a window of `duration_s` seconds.

    With `measured_only` (default) records tagged warm-up or drain by the runner are ignored, so
    passing a level's full record list is safe. `from_schedule` (open loop) measures each latency from the
    request's scheduled send time (`scheduled_s`), not its actual send: no coordinated omission.
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0 to compute throughput, got {duration_s!r}")
    records = list(records)
    rows = [r for r in records if not measured_only or r.phase == MEASURE]
    ok = [r for r in rows if r.ok]
    # Completed inside the window, whichever window its schedule put it in (open loop: warm-up sends count too).
    answered = [r for r in records if r.ok and (not measured_only or (r.completed_phase or r.phase) == MEASURE)]
    failed = [r for r in rows if not r.ok]

    kinds = Counter(r.error_kind or "unknown" for r in failed)
    statuses = Counter(r.status for r in failed if r.status)
    examples: list[str] = []
    for r in failed:
        message = r.error or "(no message)"
        if message not in examples:
            examples.append(message)
            if len(examples) >= max_error_examples:
                break

    checked = [r for r in ok if r.correct is not None]
    checked_items = sum(r.batch_size for r in checked)
    correct_items = sum(r.correct or 0 for r in checked)
    latency = _latency_stats_ms([r.end_s - r.scheduled_s if from_schedule and r.scheduled_s is not None
                                 else r.latency_s for r in ok])
    return LoadMetrics(
        duration_s=float(duration_s),
        requests=len(rows),
        completed=len(ok),
        errors=len(failed),
        error_rate=(len(failed) / len(rows)) if rows else None,
        throughput_rps=len(answered) / duration_s,
        throughput_items_per_s=sum(r.batch_size for r in answered) / duration_s,
        answered=len(answered),
        reload_retried=sum(r.retries > 0 for r in ok),
        errors_by_kind=dict(sorted(kinds.items())),
        errors_by_status=dict(sorted(statuses.items())),
        error_examples=tuple(examples),
        checked_items=checked_items,
        correct_items=correct_items,
        accuracy=correct_items / checked_items if checked_items else None,
        **latency,
    )


def _latency_stats_ms(latencies_s: list[float]) -> dict[str, float | None]:
    names = ["mean", *(f"p{p}" for p in PERCENTILES), "p999", "min", "max", "std"]
    if not latencies_s:
        return {f"latency_{n}_ms": None for n in names}
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    *pct, p999 = percentiles_ms(latencies_s, (*PERCENTILES, PERCENTILE_999))
    stats = {
        "latency_mean_ms": float(ms.mean()),
        **{f"latency_p{p}_ms": float(v) for p, v in zip(PERCENTILES, pct, strict=True)},
        "latency_p999_ms": float(p999),
        "latency_min_ms": float(ms.min()),
        "latency_max_ms": float(ms.max()),
        "latency_std_ms": float(ms.std()),
    }
    return stats
