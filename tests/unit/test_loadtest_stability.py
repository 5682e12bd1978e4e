"""Stability windows: the perf_analyzer criterion on known window figures, and pooling the last windows."""

from __future__ import annotations

import asyncio

from engineforge.loadtest.metrics import calculate_metrics
from engineforge.loadtest.records import MEASURE, RequestResult
from engineforge.loadtest.results import LevelResult
from engineforge.loadtest.stability import is_stable, run_until_stable, stability_note


def window(rps: int, latency_ms: float) -> LevelResult:
    records = [RequestResult(start_s=0.0, latency_s=latency_ms / 1000, ok=True, phase=MEASURE)] * rps
    return LevelResult(concurrency=1, window_s=1.0, metrics=calculate_metrics(records, 1.0), records=records)


def test_windows_are_stable_when_throughput_and_p99_agree_within_the_tolerance():
    assert is_stable([window(100, 10), window(105, 10.5), window(98, 9.8)], 0.1)
    assert not is_stable([window(100, 10), window(140, 10), window(100, 10)], 0.1)  # throughput spread
    assert not is_stable([window(100, 10), window(100, 14), window(100, 10)], 0.1)  # p99 spread


def test_the_level_pools_the_last_windows_and_says_whether_they_were_stable():
    figures = iter([(50, 30.0), (100, 10.0), (101, 10.1), (99, 9.9), (100, 10.0)])

    async def run(first: bool) -> LevelResult:
        return window(*next(figures))

    level = asyncio.run(run_until_stable(run, max_windows=10, tolerance=0.1))
    assert level.stability["stable"] and level.stability["windows"] == 4  # the slow first window is dropped
    assert level.metrics.requests == 300 and level.window_s == 3.0
    assert stability_note(level.to_dict()) is None

    noisy = iter([(50, 30.0), (100, 10.0), (150, 20.0), (60, 12.0)])

    async def run_noisy(first: bool) -> LevelResult:
        return window(*next(noisy))

    level = asyncio.run(run_until_stable(run_noisy, max_windows=4, tolerance=0.1))
    assert not level.stability["stable"] and level.stability["windows"] == 4
    assert "not stable within 10% after 4 windows" in stability_note(level.to_dict())
