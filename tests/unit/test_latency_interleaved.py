"""measure_latencies: engines are timed in interleaved rounds, each on its own inputs."""

from __future__ import annotations

import numpy as np

from engineforge.build.runtimes import measure_latencies


def test_engines_are_timed_in_interleaved_rounds_with_their_own_inputs():
    calls: list[tuple[str, tuple[str, ...], tuple[int, ...]]] = []

    def runner(name: str):
        def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
            calls.append((name, tuple(sorted(feeds)), feeds["input_ids"].shape))
            return np.zeros((1, 2))
        return run

    runners = {"a": (runner("a"), ["input_ids", "attention_mask"]),
               "b": (runner("b"), ["input_ids", "attention_mask", "token_type_ids"])}
    result = measure_latencies(runners, batch=2, seq_len=16, iterations=6, per_round=2, warmup=1, settle_s=0)

    assert set(result) == {"a", "b"}
    assert all(lat.iterations == 6 and lat.batch == 2 and lat.seq_len == 16 for lat in result.values())
    assert all(0 < lat.median_ms <= lat.p99_ms for lat in result.values())
    rounds = [name for name, _, _ in calls[2:]]  # after one warm-up call each
    assert rounds == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3  # untimed first call
    result = measure_latencies(runners, iterations=5, per_round=2, warmup=0)
    assert all(lat.iterations == 6 for lat in result.values())  # whole rounds
    assert {(name, keys) for name, keys, _ in calls} == {
        ("a", ("attention_mask", "input_ids")), ("b", ("attention_mask", "input_ids", "token_type_ids"))}
    assert {shape for _, _, shape in calls[:20]} == {(2, 16)}
