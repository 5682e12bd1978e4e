"""Generate-mode metrics from hand-made records: the TTFT, ITL, piece-gap and e2e definitions, percentiles,
zero- and one-token requests, failures counted but kept out of latency, windows and throughput."""

from __future__ import annotations

import pytest

from engineforge.loadtest.generate_metrics import generation_metrics, request_value_s, summarize
from engineforge.loadtest.generate_records import GenerationRecord, StreamCollector
from engineforge.loadtest.records import DRAIN, ERR_TIMEOUT, MEASURE, WARMUP


def rec(start: float, pieces: list[tuple[float, int]], end: float, *, ok: bool = True, output: int | None = None,
        **extra) -> GenerationRecord:
    """A record sent at `start`, with pieces (arrival, tokens), ending at `end`."""
    tokens = sum(n for _, n in pieces)
    return GenerationRecord(start_s=start, latency_s=end - start, ok=ok, piece_s=tuple(t for t, _ in pieces),
                            piece_tokens=tuple(n for _, n in pieces),
                            output_tokens=tokens if output is None else output,
                            finish_reason=extra.pop("finish_reason", "eos" if ok else "error"), **extra)


def test_ttft_itl_gaps_and_e2e_follow_their_definitions():
    r = rec(10.0, [(10.1, 1), (10.15, 1), (10.3, 2)], 10.35, prompt_tokens=7)
    m = generation_metrics([r], duration_s=1.0)
    assert m.ttft_ms["mean"] == pytest.approx(100.0)
    assert m.itl_ms["mean"] == pytest.approx(250.0 / 3)  # (end - first token) / (4 output tokens - 1)
    assert m.e2e_ms["mean"] == pytest.approx(350.0)
    assert m.piece_gap_ms["count"] == 2
    assert (m.piece_gap_ms["min"], m.piece_gap_ms["max"]) == pytest.approx((50.0, 150.0))
    assert m.prompt_tokens["mean"] == 7 and m.output_tokens["mean"] == 4
    assert m.output_tokens_total == 4 and m.output_tokens_per_s == 4.0 and m.requests_per_s == 1.0


def test_percentiles_are_numpy_linear_and_min_max_mean_exact():
    records = [rec(0.0, [(t, 1), (t + 0.01, 1)], t + 0.01) for t in (0.010, 0.020, 0.030, 0.040)]
    ttft = generation_metrics(records, duration_s=2.0).ttft_ms
    assert ttft["p50"] == pytest.approx(25.0) and ttft["p90"] == pytest.approx(37.0)
    assert ttft["p99"] == pytest.approx(39.7) and ttft["p99_9"] == pytest.approx(39.97)
    assert (ttft["min"], ttft["max"], ttft["mean"], ttft["count"]) == pytest.approx((10.0, 40.0, 25.0, 4))


def test_zero_and_one_token_requests_have_no_itl_but_count():
    none = rec(0.0, [], 0.05, finish_reason="stop")
    one = rec(1.0, [(1.02, 1)], 1.03)
    m = generation_metrics([none, one], duration_s=1.0)
    assert (m.completed, m.no_token_requests, m.one_token_requests) == (2, 1, 1)
    assert m.ttft_ms["count"] == 1 and m.ttft_ms["mean"] == pytest.approx(20.0)
    assert m.itl_ms is None and m.piece_gap_ms is None  # undefined, never 0
    assert m.e2e_ms["count"] == 2
    assert m.finish_reasons == {"eos": 1, "stop": 1}


def test_failures_are_counted_but_kept_out_of_latency_and_tokens():
    good = rec(0.0, [(0.1, 1), (0.2, 1)], 0.2)
    bad = rec(0.0, [(0.01, 5)], 9.0, ok=False, error="deadline", error_kind=ERR_TIMEOUT)
    m = generation_metrics([good, bad], duration_s=2.0)
    assert (m.requests, m.completed, m.errors, m.error_rate) == (2, 1, 1, 0.5)
    assert m.errors_by_kind == {ERR_TIMEOUT: 1} and m.error_examples == ("deadline",)
    assert m.ttft_ms["count"] == 1 and m.ttft_ms["max"] == pytest.approx(100.0)
    assert m.e2e_ms["max"] == pytest.approx(200.0)
    assert m.output_tokens_total == 2 and m.output_tokens["max"] == 2
    assert m.finish_reasons == {"eos": 1, "error": 1}


def test_nothing_succeeded_gives_undefined_latency_and_zero_throughput():
    bad = rec(0.0, [], 1.0, ok=False, error="refused", error_kind="unavailable")
    m = generation_metrics([bad], duration_s=1.0)
    assert (m.ttft_ms, m.itl_ms, m.e2e_ms, m.output_tokens) == (None, None, None, None)
    assert m.requests_per_s == 0.0 and m.output_tokens_per_s == 0.0 and m.error_rate == 1.0
    assert generation_metrics([], duration_s=1.0).error_rate is None
    with pytest.raises(ValueError, match="duration_s"):
        generation_metrics([], duration_s=0)


def test_only_the_window_counts_and_throughput_counts_completions_in_it():
    warm = rec(0.0, [(0.1, 3)], 0.2, phase=WARMUP)
    late = rec(0.5, [(0.6, 3)], 5.0, phase=DRAIN)
    # open loop: scheduled in the warm-up, completed in the window -> not in latency, but in throughput
    carried = rec(0.9, [(1.0, 2)], 1.1, phase=WARMUP, completed_phase=MEASURE)
    inside = rec(1.0, [(1.1, 1), (1.2, 1)], 1.2)
    m = generation_metrics([warm, late, carried, inside], duration_s=2.0)
    assert (m.requests, m.completed, m.answered) == (1, 1, 2)
    assert m.output_tokens_total == 4 and m.output_tokens_per_s == 2.0 and m.requests_per_s == 1.0
    assert generation_metrics([warm, inside], duration_s=2.0, measured_only=False).requests == 2


def test_open_loop_measures_ttft_and_e2e_from_the_scheduled_send():
    r = rec(1.0, [(1.1, 1), (1.2, 1)], 1.2, scheduled_s=0.9)
    assert request_value_s(r, "ttft", from_schedule=True) == pytest.approx(0.2)
    assert request_value_s(r, "ttft") == pytest.approx(0.1)
    assert request_value_s(r, "itl", from_schedule=True) == pytest.approx(0.1)  # unaffected
    m = generation_metrics([r], duration_s=1.0, from_schedule=True)
    assert m.e2e_ms["mean"] == pytest.approx(300.0) and m.latency_from == "scheduled send"
    with pytest.raises(ValueError, match="ttft, itl or e2e"):
        request_value_s(r, "tpot")


def test_server_token_count_wins_and_a_mismatch_is_counted():
    r = rec(0.0, [(0.1, 1), (0.2, 1)], 0.2, output=5)  # COMPLETION_TOKENS 5, 2 streamed
    m = generation_metrics([r], duration_s=1.0)
    assert m.output_tokens_total == 5 and m.token_count_mismatch == 1
    assert m.itl_ms["mean"] == pytest.approx(25.0)  # (0.2 - 0.1) / (5 - 1)


def test_summarize_is_none_for_no_samples():
    assert summarize([]) is None
    assert summarize([3.0])["p99_9"] == 3.0


def test_stream_collector_skips_tokenless_responses_and_falls_back_to_streamed_counts():
    c = StreamCollector(start_s=0.0)
    c.piece(2, "hel", at=0.1)
    c.piece(0, "", at=0.15)  # an empty final response is not a piece
    c.piece(1, "lo", at=0.2)
    r = c.record(0.25, max_tokens=8, prompt_chars=5)
    assert r.piece_s == (0.1, 0.2) and r.output_tokens == 3 and r.first_token_s == 0.1
    assert r.finish_reason is None and r.output == "hello" and r.latency_s == pytest.approx(0.25)
    c.final("length", 4, 3)
    r = c.record(0.3)
    assert (r.finish_reason, r.prompt_tokens, r.output_tokens) == ("length", 4, 3)
    failed = StreamCollector(0.0).record(1.0, ok=False, error="x", error_kind=ERR_TIMEOUT)
    assert failed.finish_reason == "error" and not failed.ok


def test_progress_lines_add_output_tokens_for_generation_records_only():
    from engineforge.loadtest.generate_records import progress_note
    from engineforge.loadtest.records import RequestResult

    records = [rec(0.0, [(0.1, 3)], 0.2), rec(0.0, [(0.1, 5)], 0.3, phase=WARMUP)]
    assert progress_note(records, 2.0) == ", 3 output tokens (1.5 tok/s)"
    assert progress_note([RequestResult(start_s=0.0, latency_s=0.1, ok=True)], 2.0) == ""
    assert progress_note(records, 0.0) == ""
