"""Which limit an open-loop level hit (loadtest/limits.py): the generator's CPU, the in-flight cap, the server or
the host, named from the evidence recorded for the level."""

from __future__ import annotations

import asyncio

import pytest

from engineforge.loadtest import limits
from engineforge.loadtest.open_loop import run_rate_level
from engineforge.loadtest.records import MEASURE, RequestResult, clock


def schedule(kept: bool, cap_wait_share: float = 0.0, sent_rps: float = 290.0) -> dict:
    return {"target_rps": 3000.0, "sent_rps": sent_rps, "sent_in_window": int(sent_rps * 10), "window_s": 10.0,
            "kept_rate": kept, "on_time": 0.1 if not kept else 1.0, "send_lag_p99_ms": 4000.0,
            "cap_wait_share": cap_wait_share, "max_in_flight": 1024}


def triton(queue_ms: float, infer_ms: float = 1.2) -> list[dict]:
    return [{"model": "intent", "requests": 8000, "queue_ms": queue_ms, "compute_input_ms": 0.05,
             "compute_infer_ms": infer_ms, "compute_output_ms": 0.05}]


def records(service_ms: list[float]) -> list[RequestResult]:
    return [RequestResult(0.0, ms / 1000, ok=True, phase=MEASURE) for ms in service_ms]


def test_a_full_in_flight_cap_before_a_saturated_server_blames_the_server_not_the_generator():
    # the reported case: --rate 3000 against a server that kept ~800 req/s, client CPU 16 %, 1024 slots full
    found = limits.diagnose(schedule(kept=False, cap_wait_share=0.9), 800.0, 16.0, 1, triton(1250.0),
                            records([1250.0] * 20))
    assert found["limit"] == limits.SERVER
    text = found["shortfall"]
    assert text.startswith("the server was the limit, not the generator (16 % CPU per process)")
    assert "the server answered 800.0 req/s of the 3000 req/s asked for" in text
    assert "queued 1250.0 ms inside Triton (intent) against 1.3 ms of compute" in text
    assert "--max-in-flight 1024" in text and "could not keep" not in text
    assert found["evidence"]["server_saturated"] and found["evidence"]["cap_wait_share"] == 0.9


def test_a_full_cap_with_a_short_server_queue_blames_the_cap():
    found = limits.diagnose(schedule(kept=False, cap_wait_share=0.5), 290.0, 16.0, 1, triton(0.2),
                            records([30.0] * 20))
    assert found["limit"] == limits.IN_FLIGHT_CAP
    assert "raise --max-in-flight (rate x latency: about 91 in flight needed)" in found["shortfall"]


def test_a_busy_generator_with_free_slots_blames_its_cpu():
    found = limits.diagnose(schedule(kept=False), 290.0, 190.0, 2, triton(0.2), records([3.0] * 20))
    assert found["limit"] == limits.GENERATOR_CPU
    assert "each of its 2 process(es) used 95 % of a core; more processes (--workers 3)" in found["shortfall"]


def test_late_sends_with_cpu_and_slots_to_spare_blame_the_host():
    found = limits.diagnose(schedule(kept=False), 290.0, 20.0, 1, None, records([3.0] * 20))
    assert found["limit"] == limits.HOST and "did not get a core" in found["shortfall"]


def test_sent_on_time_but_answered_slower_is_the_server_and_a_kept_rate_is_no_shortfall():
    behind = limits.diagnose(schedule(kept=True, sent_rps=450.0), 186.0, 30.0, 1, triton(900.0), records([900.0] * 20))
    assert behind["limit"] == limits.SERVER
    assert behind["shortfall"].startswith("sent on time, but the server answered 186.0 req/s of the 450.0 req/s sent")
    fine = limits.diagnose(schedule(kept=True, sent_rps=450.0), 449.0, 30.0, 1, triton(0.3), records([3.0] * 20))
    assert fine == fine | {"limit": None, "shortfall": None}


def test_without_triton_statistics_a_growing_service_time_marks_the_server():
    growing = records([2.0] * 5 + [200.0 + i for i in range(40)])
    found = limits.diagnose(schedule(kept=False, cap_wait_share=0.8), 100.0, 10.0, 1, None, growing)
    assert found["limit"] == limits.SERVER and "no Triton statistics" in found["shortfall"]


def capacity_endpoint(service_s: float):
    """A fake server with one instance: requests queue behind each other, so it answers ~1/service_s per second."""
    lock = asyncio.Lock()

    async def request(seq: int) -> RequestResult:
        start = clock()
        async with lock:
            await asyncio.sleep(service_s)
        return RequestResult(start_s=start, latency_s=clock() - start, ok=True)

    return request


def test_open_loop_throughput_is_what_the_server_answered_inside_the_window_with_the_sent_rate_beside_it():
    # ~100 req/s of capacity offered 300 req/s: the throughput must be the ~100 answered, not the 300 sent
    level = asyncio.run(run_rate_level(capacity_endpoint(0.01), rate=300, duration_s=1.0, warmup_s=0.2,
                                       drain_timeout_s=5.0, log=lambda _m: None))
    m, s = level.metrics, level.schedule
    assert s["kept_rate"] and s["sent_rps"] == pytest.approx(300, rel=0.05)
    assert 50 < m.throughput_rps < 110 and m.answered == pytest.approx(m.throughput_rps)
    assert s["limit"] == limits.SERVER and s["shortfall"].startswith("sent on time, but the server answered")
    assert level.to_dict()["metrics"]["throughput_rps"] == m.throughput_rps
