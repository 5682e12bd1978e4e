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


@dataclass(frozen=True)
class ProfileLatency:
    """An engine timed on a traffic profile: lengths changing every call, per batch size.

    `per_batch`: batch size -> Latency of whole calls (its seq_len is the mean padded length);
    `ms_per_request`: the mean over batch sizes of median call time / batch, the figure engines are ranked by."""

    per_batch: dict[int, Latency]
    ms_per_request: float

    def to_dict(self) -> dict[str, Any]:
        return {"ms_per_request": self.ms_per_request,
                "per_batch": {str(b): latency.to_dict() for b, latency in self.per_batch.items()}}


def profile_feeds(names: Sequence[str], lengths: Sequence[int], batch: int, vocab_size: int,
                  seed: int = 0) -> list[dict[str, np.ndarray]]:
    """One call per `batch` consecutive lengths: rows of those lengths right-padded to the longest with mask 0,
    exactly as the serving side merges the requests of a dynamic batch."""
    rng = np.random.default_rng(seed)
    low = min(1000, vocab_size // 2)
    calls = []
    for start in range(0, len(lengths) - batch + 1, batch):
        rows = list(lengths[start:start + batch])
        longest = max(rows)
        ids = np.zeros((batch, longest), dtype=np.int64)
        mask = np.zeros((batch, longest), dtype=np.int64)
        for r, n in enumerate(rows):
            ids[r, :n] = rng.integers(low, vocab_size, size=n)
            mask[r, :n] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        calls.append({n: feeds[n] for n in names})
    return calls


def measure_profile_latencies(engines: Mapping[str, Engine], vocab_size: int, profile: Any, calls: int = 60,
                              per_round: int = 5, warmup: int = 3, settle_s: float = 0.02,
                              seed: int = 0) -> dict[str, ProfileLatency]:
    """Time engines interleaved (as `measure_latencies`) on a traffic.TrafficProfile: at each of its batch sizes,
    `calls` calls whose lengths are drawn from the profile and change call to call; every engine sees the same
    calls in the same order."""
    per_batch: dict[str, dict[int, Latency]] = {name: {} for name in engines}
    for batch in profile.batch_sizes:
        feeds = {name: profile_feeds(engine.input_names, profile.draw(calls * batch, seed + batch), batch,
                                     vocab_size, seed) for name, engine in engines.items()}
        for name, engine in engines.items():
            for k in range(warmup):
                engine.run(feeds[name][k % len(feeds[name])])
        times: dict[str, list[float]] = {name: [] for name in engines}
        for start in range(0, calls, per_round):
            for name, engine in engines.items():
                time.sleep(settle_s)
                engine.run(feeds[name][start - 1])  # untimed: wakes the runtime's threads after the pause
                for feed in feeds[name][start:start + per_round]:
                    began = time.perf_counter()
                    engine.run(feed)
                    times[name].append((time.perf_counter() - began) * 1000)
        for name in engines:
            mean_len = round(float(np.mean([f["input_ids"].shape[1] for f in feeds[name]])))
            per_batch[name][batch] = summarize(times[name], batch, mean_len)
    return {name: ProfileLatency(by_batch, round(float(np.mean([lat.median_ms / b for b, lat in by_batch.items()])),
                                                 3))
            for name, by_batch in per_batch.items()}
