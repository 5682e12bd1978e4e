"""Comparisons interleave levels across models (pure orchestration, load test replaced by a recorder)."""

from __future__ import annotations

from engineforge.loadtest import compare
from engineforge.loadtest.config import LoadTestConfig
from engineforge.loadtest.metrics import calculate_metrics
from engineforge.loadtest.results import LevelResult, LoadTestResult


def test_levels_interleave_across_models_and_the_first_model_rotates(monkeypatch):
    calls: list[tuple[str, int]] = []

    def fake_run(config: LoadTestConfig) -> LoadTestResult:
        (concurrency,) = config.concurrency
        calls.append((config.model, concurrency))
        level = LevelResult(concurrency=concurrency, window_s=1.0, metrics=calculate_metrics([], 1.0), records=[])
        return LoadTestResult(config, [level], f"t{len(calls)}", f"t{len(calls)}", {"name": config.model})

    monkeypatch.setattr(compare, "run_loadtest", fake_run)
    results = compare.run_comparison(LoadTestConfig(model="a,b,c", concurrency=(1, 4, 8)), ["a", "b", "c"])
    assert calls == [("a", 1), ("b", 1), ("c", 1), ("b", 4), ("c", 4), ("a", 4), ("c", 8), ("a", 8), ("b", 8)]
    assert [r.config.model for r in results] == ["a", "b", "c"]
    assert [[lv.concurrency for lv in r.levels] for r in results] == [[1, 4, 8]] * 3
    assert results[0].config.label == "a" and results[0].config.concurrency == (1, 4, 8)
    assert (results[0].started_at, results[0].finished_at) == ("t1", "t8")
