"""calculate_metrics is a pure function of records: check it on hand-made records."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from engineforge.loadtest.metrics import LoadMetrics, calculate_metrics
from engineforge.loadtest.records import DRAIN, ERR_TIMEOUT, ERR_UNAVAILABLE, MEASURE, WARMUP, RequestResult


def ok(latency_ms: float, batch_size: int = 1, phase: str = MEASURE) -> RequestResult:
    return RequestResult(start_s=0.0, latency_s=latency_ms / 1000, ok=True, batch_size=batch_size, phase=phase)


def err(kind: str | None = ERR_TIMEOUT, message: str = "deadline exceeded", latency_ms: float = 1.0) -> RequestResult:
    return RequestResult(start_s=0.0, latency_s=latency_ms / 1000, ok=False, error=message, error_kind=kind)


def test_percentiles_come_from_the_hdr_histogram():
    records = [ok(ms) for ms in range(1, 101)]  # 1..100 ms
    m = calculate_metrics(records, duration_s=10.0)
    # HDR: the smallest value with >= p % at or below it, to 3 significant digits
    assert m.latency_p50_ms == pytest.approx(50.0, rel=1e-3)
    assert m.latency_p90_ms == pytest.approx(90.0, rel=1e-3)
    assert m.latency_p95_ms == pytest.approx(95.0, rel=1e-3)
    assert m.latency_p99_ms == pytest.approx(99.0, rel=1e-3)
    assert m.latency_p999_ms == pytest.approx(100.0, rel=1e-3)
    assert m.latency_mean_ms == pytest.approx(50.5)
    assert m.latency_min_ms == pytest.approx(1.0)
    assert m.latency_max_ms == pytest.approx(100.0)
    assert m.latency_std_ms == pytest.approx(np.std(np.arange(1, 101)))
    assert (m.requests, m.completed, m.errors, m.error_rate) == (100, 100, 0, 0.0)
    assert m.throughput_rps == pytest.approx(10.0)


def test_small_sample_percentile_matches_documented_example():
    m = calculate_metrics([ok(1), ok(2), ok(3), ok(4)], duration_s=1.0)
    assert m.latency_p50_ms == pytest.approx(2.0, rel=1e-3)


def test_one_slow_request_in_a_thousand_shows_at_p999_only():
    m = calculate_metrics([ok(2)] * 999 + [ok(900)], duration_s=1.0)
    assert m.latency_p99_ms == pytest.approx(2.0, rel=1e-3) and m.latency_p999_ms == pytest.approx(2.0, rel=1e-3)
    m = calculate_metrics([ok(2)] * 998 + [ok(900)] * 2, duration_s=1.0)
    assert m.latency_p999_ms == pytest.approx(900.0, rel=1e-3) and m.latency_max_ms == pytest.approx(900.0)


def test_errors_are_counted_by_kind_and_excluded_from_latency_and_throughput():
    records = [ok(10)] * 8 + [err(ERR_TIMEOUT, latency_ms=10_000), err(ERR_UNAVAILABLE, "refused"), err(None, "x")]
    m = calculate_metrics(records, duration_s=2.0)
    assert (m.requests, m.completed, m.errors) == (11, 8, 3)
    assert m.error_rate == pytest.approx(3 / 11)
    assert m.errors_by_kind == {ERR_TIMEOUT: 1, ERR_UNAVAILABLE: 1, "unknown": 1}
    assert m.error_examples == ("deadline exceeded", "refused", "x")
    assert m.throughput_rps == pytest.approx(4.0)  # successes only
    assert m.latency_max_ms == pytest.approx(10.0)  # the 10 s timeout does not pollute latency


def test_error_examples_are_distinct_and_capped():
    m = calculate_metrics([err(message="same")] * 5 + [err(message=f"m{i}") for i in range(5)], 1.0)
    assert m.error_examples == ("same", "m0", "m1")


def test_zero_successes_gives_none_latencies_and_zero_throughput_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy "mean of empty slice" or division warnings
        m = calculate_metrics([err(), err()], duration_s=5.0)
    assert (m.requests, m.completed, m.errors, m.error_rate) == (2, 0, 2, 1.0)
    assert m.throughput_rps == 0.0 and m.throughput_items_per_s == 0.0
    for name in ("mean", "p50", "p90", "p95", "p99", "p999", "min", "max", "std"):
        assert getattr(m, f"latency_{name}_ms") is None


def test_no_records_at_all_has_undefined_error_rate():
    m = calculate_metrics([], duration_s=1.0)
    assert (m.requests, m.completed, m.errors) == (0, 0, 0)
    assert m.error_rate is None
    assert m.latency_p99_ms is None


def test_throughput_accounts_for_batch_size():
    records = [ok(5, batch_size=4)] * 10 + [RequestResult(0.0, 0.001, ok=False, batch_size=4, error="e")]
    m = calculate_metrics(records, duration_s=2.0)
    assert m.throughput_rps == pytest.approx(5.0)
    assert m.throughput_items_per_s == pytest.approx(20.0)


def test_warmup_and_drain_records_are_ignored_unless_asked():
    records = [ok(1, phase=WARMUP)] * 5 + [ok(2)] * 3 + [ok(3, phase=DRAIN)] * 2
    assert calculate_metrics(records, 1.0).requests == 3
    assert calculate_metrics(records, 1.0).latency_max_ms == pytest.approx(2.0)
    assert calculate_metrics(records, 1.0, measured_only=False).requests == 10


@pytest.mark.parametrize("duration", [0.0, -1.0, math.nan])
def test_non_positive_duration_is_rejected(duration):
    with pytest.raises(ValueError, match="duration_s"):
        calculate_metrics([ok(1)], duration_s=duration)


def test_metrics_dict_round_trip():
    m = calculate_metrics([ok(1), ok(2), err()], 1.0)
    again = LoadMetrics.from_dict(m.to_dict())
    assert again == m
    assert isinstance(m.to_dict()["error_examples"], list)


def test_correctness_is_counted_apart_from_latency_and_throughput():
    records = [RequestResult(start_s=0.0, latency_s=0.01, ok=True, batch_size=2, correct=2),
               RequestResult(start_s=0.0, latency_s=0.01, ok=True, batch_size=2, correct=1),
               RequestResult(start_s=0.0, latency_s=0.02, ok=True, batch_size=2),  # not checked
               RequestResult(start_s=0.0, latency_s=0.03, ok=False, batch_size=2, error="x")]
    m = calculate_metrics(records, 1.0)
    assert (m.checked_items, m.correct_items, m.accuracy) == (4, 3, 0.75)
    assert m.completed == 3 and m.throughput_rps == 3.0  # a wrong label is still a served request
    assert calculate_metrics(records[2:], 1.0).accuracy is None


def test_errors_are_counted_by_grpc_status_code():
    records = [RequestResult(start_s=0.0, latency_s=0.01, ok=False, error="bad", error_kind="server_error",
                             status="INVALID_ARGUMENT"),
               RequestResult(start_s=0.0, latency_s=0.01, ok=False, error="bad", error_kind="server_error",
                             status="INVALID_ARGUMENT"),
               RequestResult(start_s=0.0, latency_s=5.0, ok=False, error="slow", error_kind="timeout",
                             status="DEADLINE_EXCEEDED"),
               RequestResult(start_s=0.0, latency_s=0.01, ok=False, error="no outputs", error_kind="bad_output")]
    m = calculate_metrics(records, 1.0)
    assert m.errors_by_status == {"DEADLINE_EXCEEDED": 1, "INVALID_ARGUMENT": 2}  # a bad output had no failed call
    assert m.errors_by_kind == {"bad_output": 1, "server_error": 2, "timeout": 1}
    assert m.to_dict()["errors_by_status"] == {"DEADLINE_EXCEEDED": 1, "INVALID_ARGUMENT": 2}


def test_throughput_counts_responses_completed_inside_the_window_whatever_their_schedule():
    # open loop: phase follows the scheduled send, completed_phase the answer. 300 due in the window, but the server
    # answered only 100 of them inside it (the rest after it closed); 20 warm-up sends were answered inside it.
    due = [RequestResult(0.0, 0.01, ok=True, phase=MEASURE, completed_phase=MEASURE)] * 100
    due += [RequestResult(0.0, 0.01, ok=True, phase=MEASURE, completed_phase=DRAIN)] * 200
    warm = [RequestResult(0.0, 0.01, ok=True, phase=WARMUP, completed_phase=MEASURE)] * 20
    m = calculate_metrics(due + warm, duration_s=1.0, from_schedule=True)
    assert m.requests == 300 and m.completed == 300  # latency and errors: what was due in the window
    assert m.answered == 120 and m.throughput_rps == pytest.approx(120.0)  # perf_analyzer's throughput
    assert m.throughput_items_per_s == pytest.approx(120.0)
    # a closed loop phases records by completion: unchanged
    assert calculate_metrics([ok(1)] * 5 + [ok(1, phase=DRAIN)], 1.0).throughput_rps == pytest.approx(5.0)


def test_requests_that_waited_through_a_reload_are_counted():
    records = [RequestResult(0.0, 0.5, ok=True, retries=3), RequestResult(0.0, 0.01, ok=True)]
    assert calculate_metrics(records, 1.0).reload_retried == 1
