"""measure_latencies: engines are timed in interleaved rounds, each on its own inputs from the vocabulary."""

from __future__ import annotations

import numpy as np

from engineforge.engines import measure_latencies, synthetic_feeds
from engineforge.stats import percentiles


class FakeEngine:
    runtime = "fake"
    output_names = ("logits",)

    def __init__(self, name: str, input_names: tuple[str, ...], calls: list) -> None:
        self.name, self.input_names, self.calls = name, input_names, calls

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.calls.append((self.name, tuple(sorted(feeds)), feeds["input_ids"].shape))
        return np.zeros((1, 2))

    def settings(self) -> dict:
        return {}


def test_engines_are_timed_in_interleaved_rounds_with_their_own_inputs():
    calls: list[tuple[str, tuple[str, ...], tuple[int, ...]]] = []
    runners = {"a": FakeEngine("a", ("input_ids", "attention_mask"), calls),
               "b": FakeEngine("b", ("input_ids", "attention_mask", "token_type_ids"), calls)}
    result = measure_latencies(runners, 30522, batch=2, seq_len=16, iterations=6, per_round=2, warmup=1,
                               settle_s=0)

    assert set(result) == {"a", "b"}
    assert all(lat.iterations == 6 and lat.batch == 2 and lat.seq_len == 16 for lat in result.values())
    assert all(0 < lat.median_ms <= lat.p99_ms for lat in result.values())
    rounds = [name for name, _, _ in calls[2:]]  # after one warm-up call each
    assert rounds == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3  # untimed first call
    result = measure_latencies(runners, 30522, iterations=5, per_round=2, warmup=0)
    assert all(lat.iterations == 6 for lat in result.values())  # whole rounds
    assert {(name, keys) for name, keys, _ in calls} == {
        ("a", ("attention_mask", "input_ids")), ("b", ("attention_mask", "input_ids", "token_type_ids"))}
    assert {shape for _, _, shape in calls[:20]} == {(2, 16)}


def test_synthetic_ids_come_from_the_models_vocabulary():
    small = synthetic_feeds(("input_ids", "attention_mask"), 4, 64, vocab_size=100)["input_ids"]
    assert small.min() >= 50 and small.max() < 100  # a 100-token vocabulary: ids above its first half
    big = synthetic_feeds(("input_ids",), 4, 64, vocab_size=30522)["input_ids"]
    assert big.min() >= 1000 and big.max() < 30522  # above BERT's reserved [unused] ids


def test_one_percentile_definition():
    assert percentiles([1, 2, 3, 4], (50, 100)) == [2.5, 4.0]  # linear interpolation between ranks
