"""Latency of engines on synthetic token ids from the model's own vocabulary, alone or interleaved."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engineforge.stats import percentiles

from .registry import Engine


@dataclass(frozen=True)
class Latency:
    batch: int
    seq_len: int
    median_ms: float
    p99_ms: float
    iterations: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def synthetic_feeds(names: Sequence[str], batch: int, seq_len: int, vocab_size: int,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Timing inputs only (latency does not depend on token values); never used for accuracy. Ids come
    from the model's vocabulary, above the reserved/special ids at its start where the vocabulary allows."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    low = min(1000, vocab_size // 2)
    ids = np.random.default_rng(seed).integers(low, vocab_size, size=(batch, seq_len), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {n: feeds[n] for n in names}


def summarize(times_ms: Sequence[float], batch: int, seq_len: int) -> Latency:
    median, p99 = percentiles(times_ms, (50, 99))
    return Latency(batch, seq_len, round(median, 3), round(p99, 3), len(times_ms))


def measure_latency(engine: Engine, vocab_size: int, batch: int = 1, seq_len: int = 128, iterations: int = 50,
                    warmup: int = 5, max_seconds: float = 20.0) -> Latency:
    """Median and p99 wall time of `iterations` calls (fewer if `max_seconds` runs out)."""
    feeds = synthetic_feeds(engine.input_names, batch, seq_len, vocab_size)
    for _ in range(warmup):
        engine.run(feeds)
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < iterations and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        engine.run(feeds)
        times.append((time.perf_counter() - start) * 1000)
    return summarize(times, batch, seq_len)


def measure_latencies(engines: Mapping[str, Engine], vocab_size: int, batch: int = 1, seq_len: int = 128,
                      iterations: int = 50, per_round: int = 5, warmup: int = 5,
                      settle_s: float = 0.02) -> dict[str, Latency]:
    """Time several engines in interleaved rounds (`per_round` calls each, in turn), so that load from
    elsewhere on a shared machine hits them all alike: back-to-back runs on these 2-core machines
    drifted by 15 % between minutes (6.5 vs 7.7 ms for the same file), enough to flip a comparison.

    Each round starts with a pause and one untimed call: ONNX Runtime's and OpenVINO's worker threads
    spin for a while after a call, and would otherwise steal the cores from the next engine's first calls."""
    feeds = {name: synthetic_feeds(engine.input_names, batch, seq_len, vocab_size) for name, engine in engines.items()}
    for name, engine in engines.items():
        for _ in range(warmup):
            engine.run(feeds[name])
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(-(-iterations // per_round)):
        for name, engine in engines.items():
            time.sleep(settle_s)
            engine.run(feeds[name])
            for _ in range(per_round):
                start = time.perf_counter()
                engine.run(feeds[name])
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: summarize(values, batch, seq_len) for name, values in times.items()}
