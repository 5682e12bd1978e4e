"""What a load test produces: one `LevelResult` per level and the `LoadTestResult` of a run, with the helpers
that name and judge a level. Plain data: the closed and open loops, the worker processes, the stability windows
and the reports all build on this module, and it imports none of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import LoadTestConfig
from .limits import GENERATOR_BOUND_CPU_PERCENT, GENERATOR_CPU
from .metrics import LoadMetrics
from .records import RequestResult


@dataclass
class LevelResult:
    """One concurrency level: its metrics and every raw record (all phases, tagged)."""

    concurrency: int
    window_s: float  # measurement window actually covered (shorter only if aborted)
    metrics: LoadMetrics
    records: list[RequestResult] = field(repr=False)
    warmup_requests: int = 0
    drained_requests: int = 0  # completed after the window closed (not in metrics)
    cancelled_requests: int = 0  # still in flight after the drain timeout (not in metrics)
    # CPU used by this process over the window, in % of one core. Near 100 % means the load
    # generator, not the server, may be the bottleneck.
    client_cpu_percent: float | None = None
    aborted: str | None = None
    # Open loop (loadtest/open_loop.py): the target rate and how well the generator kept its schedule.
    rate: float | None = None
    schedule: dict[str, Any] | None = None
    # Triton's own view of the window, per model (loadtest/server_stats.py); None without statistics.
    server: list[dict[str, Any]] | None = None
    # Stability windows (loadtest/stability.py): stable or not, windows measured, per-window figures.
    stability: dict[str, Any] | None = None
    workers: int = 1  # generator processes that drove the level (loadtest/workers.py)

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "rate": self.rate,
            "schedule": self.schedule,
            "server": self.server,
            "stability": self.stability,
            "workers": self.workers,
            "window_s": self.window_s,
            "metrics": self.metrics.to_dict(),
            "warmup_requests": self.warmup_requests,
            "drained_requests": self.drained_requests,
            "cancelled_requests": self.cancelled_requests,
            "client_cpu_percent": self.client_cpu_percent,
            "aborted": self.aborted,
        }


@dataclass
class LoadTestResult:
    config: LoadTestConfig
    levels: list[LevelResult]
    started_at: str  # ISO 8601 UTC
    finished_at: str
    model_metadata: dict[str, Any] | None = None
    slo: dict[str, Any] | None = None  # `--slo`'s verdict (loadtest/slo.verdict), stored in every report

    @property
    def failed(self) -> bool:
        """True when a level was aborted or had no successful request at all."""
        return any(lv.aborted or lv.metrics.completed == 0 for lv in self.levels)


def level_name(open_loop: bool, value: float) -> str:
    """How progress lines name a level: "rate 200 req/s" or "concurrency 4"."""
    return f"rate {value:g} req/s" if open_loop else f"concurrency {int(value)}"


def generator_bound(level: LevelResult) -> bool:
    """Did the load generator, not the server, limit this level (pure)? Each process near a full core, and in open
    loop the rate not kept with no other limit named (loadtest/limits.py: a full in-flight cap or the server wins);
    a closed loop has no rate to keep: a busy generator there is the limit by itself. `--workers auto` then
    measures the level again with one more process."""
    per_process = (level.client_cpu_percent or 0.0) / max(level.workers, 1)
    if per_process < GENERATOR_BOUND_CPU_PERCENT:
        return False
    if level.schedule is None:
        return True
    return not level.schedule.get("kept_rate", True) and level.schedule.get("limit") in (None, GENERATOR_CPU)


def level_summary(level: LevelResult) -> str:
    m = level.metrics
    text = f"{m.completed} ok, {m.errors} errors, {m.throughput_rps:.1f} req/s"
    if level.schedule:
        text += f" answered (sent {level.schedule.get('sent_rps', 0.0):.1f} req/s)"
    if m.latency_p50_ms is not None:
        text += f", p50 {m.latency_p50_ms:.2f} ms, p99 {m.latency_p99_ms:.2f} ms, max {m.latency_max_ms:.2f} ms"
    if level.aborted:
        text += f" — {level.aborted}"
    if level.schedule and level.schedule.get("shortfall"):
        text += f" — limit: {level.schedule.get('limit')}: {level.schedule['shortfall']}"
    return text
