"""Stability windows (perf_analyzer's criterion): after the warm-up, measure window after window until the last
`needed` windows agree on throughput and p99 within a tolerance, or `max_windows` is reached; the level's figures
are those of the last `needed` windows together, and the report says whether they were stable."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .metrics import calculate_metrics
from .open_loop import add_diagnosis
from .results import LevelResult


def is_stable(windows: Sequence[LevelResult], tolerance: float) -> bool:
    """Every window's throughput and p99 within `tolerance` (a fraction) of their mean over `windows` (pure)."""
    for values in ([w.metrics.throughput_rps for w in windows], [w.metrics.latency_p99_ms for w in windows]):
        if any(v is None for v in values):
            return False
        mean = sum(values) / len(values)
        if mean <= 0 or any(abs(v - mean) > tolerance * mean for v in values):
            return False
    return True


def merge(windows: Sequence[LevelResult], from_schedule: bool) -> LevelResult:
    """One level from consecutive windows: records pooled, metrics over their summed duration."""
    records = [r for w in windows for r in w.records]
    window_s = sum(w.window_s for w in windows)
    first = windows[0]
    level = dataclasses.replace(
        first, window_s=window_s, records=records,
        metrics=calculate_metrics(records, max(window_s, 1e-9), from_schedule=from_schedule),
        warmup_requests=sum(w.warmup_requests for w in windows),
        drained_requests=sum(w.drained_requests for w in windows),
        cancelled_requests=sum(w.cancelled_requests for w in windows),
        aborted=next((w.aborted for w in windows if w.aborted), None),
        server=windows[-1].server, schedule=dict(windows[-1].schedule) if windows[-1].schedule else None)
    if level.schedule is not None:  # the last window's schedule, its limit judged on the pooled figures
        add_diagnosis(level)
    return level


async def run_until_stable(run_window: Callable[[bool], Awaitable[LevelResult]], max_windows: int,
                           tolerance: float = 0.1, needed: int = 3,
                           log: Callable[[str], None] | None = None) -> LevelResult:
    """`run_window(first)` measures one window (the first one after the warm-up)."""
    windows: list[LevelResult] = []
    stable = False
    while len(windows) < max(max_windows, needed):
        windows.append(await run_window(not windows))
        if windows[-1].aborted:
            break
        if len(windows) >= needed and is_stable(windows[-needed:], tolerance):
            stable = True
            break
    level = merge(windows[-needed:], from_schedule=windows[0].rate is not None)
    per_window = [{"throughput_rps": round(w.metrics.throughput_rps, 2), "p99_ms": w.metrics.latency_p99_ms}
                  for w in windows]
    level.stability = {"stable": stable, "windows": len(windows), "used": min(needed, len(windows)),
                       "tolerance": tolerance, "per_window": per_window}
    if log:
        log(f"{'stable' if stable else 'NOT stable'} after {len(windows)} windows (throughput and p99 within "
            f"{tolerance:.0%} over the last {needed})")
    return level


def stability_note(level: dict[str, Any]) -> str | None:
    info = level.get("stability")
    if not info or info["stable"]:
        return None
    return (f"not stable within {info['tolerance']:.0%} after {info['windows']} windows (throughput and p99 of the "
            f"last {info['used']} windows vary more); its figures pool the last {info['used']}")
