"""Open-loop scheduling against fake endpoints, and coordinated omission: latency from the scheduled send."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from engineforge.loadtest.closed_loop import run_level
from engineforge.loadtest.metrics import calculate_metrics
from engineforge.loadtest.open_loop import run_rate_level, schedule_offsets
from engineforge.loadtest.records import MEASURE, RequestResult, clock


def quiet(_message: str) -> None:
    pass


def endpoint(service_s: float, stall: tuple[float, float] | None = None):
    """A fake server: each request takes service_s; during `stall` (seconds from the first request) it answers
    nothing until the stall ends (a GC pause, a reload)."""
    first: list[float] = []

    async def request(seq: int) -> RequestResult:
        start = clock()
        first.append(start) if not first else None
        wait = service_s
        if stall is not None:
            t = start - first[0]
            if stall[0] <= t < stall[1]:
                wait += stall[1] - t
        await asyncio.sleep(wait)
        return RequestResult(start_s=start, latency_s=clock() - start, ok=True)

    return request


def test_constant_and_poisson_schedules_hold_the_rate():
    constant = schedule_offsets(200, 2.0)
    assert len(constant) == 400 and np.allclose(np.diff(constant), 1 / 200)
    poisson = schedule_offsets(200, 20.0, "poisson", seed=3)
    assert len(poisson) == pytest.approx(4000, rel=0.05) and poisson[0] == 0.0 and (np.diff(poisson) > 0).all()
    gaps = np.diff(poisson)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.1)  # exponential gaps: CV 1


def test_open_loop_keeps_its_rate_against_a_slow_endpoint():
    level = asyncio.run(run_rate_level(endpoint(0.02), rate=100, duration_s=1.5, warmup_s=0.2, log=quiet))
    schedule = level.schedule
    assert schedule["kept_rate"] and schedule["scheduled"] == 150 and schedule["sent_rps"] == pytest.approx(100)
    assert level.metrics.completed == 150 and level.metrics.throughput_rps == pytest.approx(100, rel=0.02)
    assert 20 <= level.metrics.latency_p50_ms < 40  # many requests in flight at once: the loop did not wait
    assert level.to_dict()["rate"] == 100


def test_a_generator_held_back_by_its_in_flight_cap_says_so_and_the_lag_is_in_the_latency():
    # one request in flight at a time, 20 ms each: at most 50 req/s can go out of the 200 asked for; the endpoint
    # answers every request in 20 ms (no queue), so the cap, not the server, is the limit
    level = asyncio.run(run_rate_level(endpoint(0.02), rate=200, duration_s=1.0, max_in_flight=1, log=quiet))
    schedule = level.schedule
    assert not schedule["kept_rate"] and schedule["send_lag_p99_ms"] > 100
    assert schedule["limit"] == "--max-in-flight" and schedule["cap_wait_share"] > 0.5
    assert schedule["shortfall"].startswith("the in-flight cap was the limit (--max-in-flight 1)")
    assert "raise --max-in-flight" in schedule["shortfall"]
    assert level.metrics.latency_p99_ms > 300  # measured from the schedule, not from the late send


def test_a_stalled_server_shows_in_the_open_loop_tail_but_hides_in_a_closed_loop():
    stall = (0.5, 0.8)  # 300 ms without answers, after half a second
    closed = asyncio.run(run_level(endpoint(0.005, stall), concurrency=1, duration_s=2.0, progress_every_s=0,
                                   log=quiet))
    opened = asyncio.run(run_rate_level(endpoint(0.005, stall), rate=100, duration_s=2.0, log=quiet))
    # closed loop: one slow sample among hundreds; p99 stays near the service time
    assert closed.metrics.latency_max_ms > 250 and closed.metrics.latency_p99_ms < 50
    # open loop: every request due during the stall waited for it (~30 of 200): the tail shows it
    assert opened.metrics.latency_p95_ms > 100 and opened.metrics.latency_max_ms > 250


def test_requests_unanswered_after_the_drain_become_timeouts_with_their_wait():
    async def never(seq: int) -> RequestResult:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    level = asyncio.run(run_rate_level(never, rate=20, duration_s=0.5, drain_timeout_s=0.3, log=quiet))
    assert level.metrics.completed == 0 and level.metrics.errors == 10
    assert level.metrics.errors_by_kind == {"timeout": 10} and level.cancelled_requests == 10


def test_latency_from_schedule_is_a_pure_function_of_the_records():
    # three requests due at 0, 10, 20 ms; the server answered the first after 100 ms, then both others at once
    records = [RequestResult(start_s=s, latency_s=e - s, ok=True, phase=MEASURE, scheduled_s=d)
               for d, s, e in ((0.0, 0.0, 0.1), (0.01, 0.1, 0.101), (0.02, 0.101, 0.102))]
    service = calculate_metrics(records, 1.0)
    from_schedule = calculate_metrics(records, 1.0, from_schedule=True)
    assert service.latency_p50_ms == pytest.approx(1.0, rel=1e-2)  # what a closed loop would report
    assert from_schedule.latency_p50_ms == pytest.approx(91.0, rel=1e-2)  # what the users waited
    assert from_schedule.latency_max_ms == pytest.approx(100.0)


def test_open_loop_reports_progress_while_it_runs():
    lines: list[str] = []
    asyncio.run(run_rate_level(endpoint(0.005), rate=100, duration_s=1.0, warmup_s=0.3, log=lines.append,
                               progress_every_s=0.25))
    warming = [line for line in lines if "warming up" in line]
    window = [line for line in lines if "answered in the window" in line]
    assert warming and warming[0].startswith("rate 100 req/s: warming up, ")
    assert len(window) >= 2 and "0 errors" in window[-1] and "recent send lag up to" in window[-1]
    assert lines[-1].startswith("rate 100 req/s (latency from the scheduled send): 100 ok, 0 errors")


def test_shifted_worker_schedules_start_on_a_shared_deadline():
    async def two_workers() -> list:
        start = clock() + 0.05
        return await asyncio.gather(*(run_rate_level(endpoint(0.001), rate=50, duration_s=0.5, log=quiet,
                                                     start_at=start, shift_s=k / 100) for k in range(2)))

    a, b = asyncio.run(two_workers())
    sends = sorted(r.scheduled_s for r in a.records + b.records if r.phase == MEASURE)
    assert len(sends) == 50 and np.allclose(np.diff(sends), 0.01)  # one even 100 req/s schedule


def test_a_level_ends_on_time_and_requests_never_sent_are_counted_as_such():
    # 100 due in 0.5 s, one in flight at a time at 20 ms each: ~40 can go out before the window + drain ends
    t0 = clock()
    level = asyncio.run(run_rate_level(endpoint(0.02), rate=200, duration_s=0.5, max_in_flight=1,
                                       drain_timeout_s=0.3, log=quiet))
    assert clock() - t0 < 1.5  # the old generator kept sending late for 2 s after the window
    m = level.metrics
    assert m.errors_by_kind.get("not_sent", 0) > 40 and m.requests == 100
    assert m.completed + m.errors == 100 and m.answered <= 26  # answered inside the 0.5 s window only
    assert any(e.startswith("never sent: the generator was") for e in m.error_examples)
    assert level.schedule["not_sent"] == m.errors_by_kind["not_sent"]
