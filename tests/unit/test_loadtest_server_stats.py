"""Triton's statistics differenced over a window: pure functions on hand-made statistics JSON."""

from __future__ import annotations

import pytest

from engineforge.loadtest.server_stats import breakdown, ensemble_members, parse_statistics


def _stats(name: str, success: int, inferences: int, executions: int, queue_ms: float, infer_ms: float) -> dict:
    ns = 1_000_000
    return {"name": name, "version": "1", "inference_count": inferences, "execution_count": executions,
            "inference_stats": {"success": {"count": success, "ns": 0}, "queue": {"ns": int(queue_ms * ns)},
                                "compute_input": {"ns": 0}, "compute_infer": {"ns": int(infer_ms * ns)},
                                "compute_output": {"ns": 0}}}


def test_a_window_is_the_difference_of_two_snapshots_per_model():
    before = parse_statistics({"model_stats": [_stats("m_engine", 100, 100, 100, 10, 200)]})
    after = parse_statistics({"model_stats": [_stats("m_engine", 300, 300, 50 + 100, 30, 600)]})
    (row,) = breakdown(before, after, ["m_engine", "absent"])
    assert row["requests"] == 200 and row["executions"] == 50
    assert row["avg_batch"] == 4.0  # 200 inferences in 50 executions: dynamic batching merged 4 at a time
    assert row["queue_ms"] == pytest.approx(0.1) and row["compute_infer_ms"] == pytest.approx(2.0)


def test_versions_are_summed_and_an_idle_window_has_no_times():
    two = parse_statistics({"model_stats": [_stats("m", 5, 5, 5, 1, 1), _stats("m", 5, 5, 5, 1, 1)]})
    assert two["m"]["success"] == 10
    (idle,) = breakdown(two, two, ["m"])
    assert idle["requests"] == 0 and idle["queue_ms"] is None and idle["avg_batch"] is None


def test_ensemble_members_come_in_step_order():
    config = {"ensemble_scheduling": {"step": [{"model_name": "m_tokenizer"}, {"model_name": "m_engine"}]}}
    assert ensemble_members(config) == ["m_tokenizer", "m_engine"] and ensemble_members({"backend": "python"}) == []
