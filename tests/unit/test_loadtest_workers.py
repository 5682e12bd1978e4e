"""Worker processes' shares and the merge of their parts: pure functions of the parts' records."""

from __future__ import annotations

import numpy as np
import pytest

from engineforge.loadtest.metrics import calculate_metrics
from engineforge.loadtest.open_loop import schedule_offsets
from engineforge.loadtest.records import MEASURE, RequestResult
from engineforge.loadtest.results import LevelResult, generator_bound
from engineforge.loadtest.workers import merge_parts, split_concurrency


@pytest.mark.parametrize("concurrency, workers, shares", [(5, 2, [3, 2]), (2, 4, [1, 1]), (8, 4, [2, 2, 2, 2]),
                                                          (1, 3, [1])])
def test_concurrency_is_split_evenly_and_never_into_empty_shares(concurrency, workers, shares):
    assert split_concurrency(concurrency, workers) == shares


def test_shifted_constant_schedules_of_n_workers_merge_into_one_even_schedule():
    rate, n, span = 90.0, 3, 2.0
    merged = np.sort(np.concatenate([(schedule_offsets(rate / n, span) + k / rate) for k in range(n)]))
    merged = merged[merged < span]
    assert len(merged) == rate * span
    assert np.allclose(np.diff(merged), 1 / rate)


def _part(records: list[RequestResult], cpu: float, rate: float | None) -> LevelResult:
    return LevelResult(concurrency=0 if rate else 2, window_s=1.0, metrics=calculate_metrics(records, 1.0),
                       records=records, client_cpu_percent=cpu, rate=rate)


def test_merged_parts_recompute_every_metric_from_the_pooled_records():
    # Two workers of an open loop at 4 req/s in total; worker 1's server answers slowly.
    fast = [RequestResult(start_s=t, latency_s=0.01, ok=True, seq=i, scheduled_s=t, phase=MEASURE)
            for i, t in enumerate((0.0, 0.5))]
    slow = [RequestResult(start_s=t, latency_s=0.5, ok=True, seq=i, scheduled_s=t, phase=MEASURE)
            for i, t in enumerate((0.25, 0.75))]
    level = merge_parts([_part(fast, 30.0, 2.0), _part(slow, 40.0, 2.0)], duration_s=1.0, rate=4.0, concurrency=0,
                        window_end=1.0)
    assert level.workers == 2 and level.rate == 4.0 and level.client_cpu_percent == 70.0
    assert level.metrics.completed == 4 and level.metrics.throughput_rps == 4.0
    assert level.metrics.latency_max_ms == pytest.approx(500.0)  # the slow half is in the pooled tail
    assert sorted(r.seq for r in level.records) == [0, 1, 2, 3]  # request ids unique across processes
    assert level.schedule["target_rps"] == 4.0 and level.schedule["scheduled"] == 4


def test_merged_closed_loop_parts_keep_worker_ids_apart_and_carry_an_abort():
    a = [RequestResult(start_s=0.0, latency_s=0.1, ok=True, worker_id=w, seq=w) for w in (0, 1)]
    b = [RequestResult(start_s=0.0, latency_s=0.1, ok=False, error="x", error_kind="unavailable", worker_id=0, seq=0)]
    part_b = _part(b, 5.0, None)
    part_b.aborted = "aborted after 1000 consecutive failed requests"
    level = merge_parts([_part(a, 10.0, None), part_b], duration_s=1.0, rate=None, concurrency=4, window_end=1.0)
    assert level.concurrency == 4 and level.schedule is None
    assert sorted(r.worker_id for r in level.records) == [0, 1, 2]
    assert level.aborted.startswith("aborted after") and level.metrics.errors == 1


def _level(cpu: float, workers: int, kept: bool | None) -> LevelResult:
    level = _part([], cpu, None if kept is None else 100.0)
    level.workers = workers
    level.schedule = None if kept is None else {"kept_rate": kept}
    return level


@pytest.mark.parametrize("cpu, workers, kept, bound", [
    (95.0, 1, False, True),    # one process flat out and the rate missed: the generator was the limit
    (95.0, 1, True, False),    # busy but it kept the rate
    (50.0, 1, False, False),   # rate missed with CPU to spare: the server was the limit
    (170.0, 2, False, True),   # 85 % per process over two
    (150.0, 2, False, False),  # 75 % per process
    (90.0, 1, None, True),     # a closed loop with its generator flat out
])
def test_generator_bound_needs_a_busy_process_and_a_missed_rate(cpu, workers, kept, bound):
    assert generator_bound(_level(cpu, workers, kept)) is bound


def test_auto_workers_measure_again_with_one_more_process_until_the_rate_is_kept(monkeypatch):
    import asyncio

    from engineforge.loadtest import runner, workers
    from engineforge.loadtest.config import LoadTestConfig

    monkeypatch.setattr(workers.os, "cpu_count", lambda: 4)
    started: list[int] = []

    class FakePool:  # stands in for the spawned processes: generator-bound with 2, fine with 3
        def __init__(self, n: int) -> None:
            self.n = n

        async def run_level(self, value, warmup_s, probe=None, log=None):
            return _level(95.0 * self.n, self.n, kept=self.n >= 3)

        async def close(self) -> None:
            started.append(-self.n)

    async def factory(n: int) -> FakePool:
        started.append(n)
        return FakePool(n)

    async def scenario() -> LevelResult:
        config = LoadTestConfig(model="m", rates=(5000.0,), workers=0)
        generators = workers.Generators(config, None, request_fn=None, pool_factory=factory)
        generators.size = 2  # as if the one-process level had just been generator-bound
        await generators.start()
        measure = runner._level_measurer(config, None, generators)
        level = await measure(5000.0, 0.0, True)
        await generators.close()
        return level

    level = asyncio.run(scenario())
    assert level.workers == 3 and level.schedule["kept_rate"]
    assert started == [2, -2, 3, -3]  # the 2-process pool was closed before the 3-process one started


def test_a_level_limited_by_the_server_or_the_cap_is_not_handed_more_generator_processes():
    level = _level(95.0, 1, kept=False)
    level.schedule["limit"] = "server"  # a busy process, but a full in-flight cap in front of a saturated server
    assert not generator_bound(level)
    level.schedule["limit"] = "generator CPU"
    assert generator_bound(level)
