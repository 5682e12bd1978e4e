"""The traffic a build will serve: the token lengths of its texts, and the calls that time engines on them.

Served text changes shape on nearly every call (each message has its own length, each dynamic batch its own size),
and some runtimes pay for every shape change (OpenVINO's CPU plugin about 1 ms here). So engines are timed on the
lengths users send, drawn from a `TrafficProfile` and changing call to call, at batch 1 and at the batch sizes the
dynamic batcher forms; one fixed 1x128 shape stays only as a reference column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engineforge.errors import ConfigError
from engineforge.stats import percentiles

# How many lengths a profile keeps (a sample of the texts, in their order): enough to draw realistic calls.
SAMPLE_SIZE = 1024
# Batch sizes engines are timed at on the profile: a lone request, and a batch the dynamic batcher forms under load.
DEFAULT_BATCH_SIZES = (1, 4)


@dataclass(frozen=True)
class TrafficProfile:
    """Token lengths (special tokens included, truncated at `max_sequence_length`) of the texts a build was given.

    `source` says which texts (e.g. "traffic data /path/requests.jsonl", "eval data"), `count` how many there were;
    `lengths` keeps a sample of at most SAMPLE_SIZE of them, in their order."""

    source: str
    lengths: tuple[int, ...]
    max_sequence_length: int
    count: int = 0
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in self.batch_sizes))
        object.__setattr__(self, "count", self.count or len(self.lengths))
        if not self.lengths:
            raise ConfigError(f"traffic profile from {self.source}: no texts; give texts with --traffic-data "
                              "(or eval/calibration data)")
        if min(self.lengths) < 1 or max(self.lengths) > self.max_sequence_length:
            raise ConfigError(f"traffic profile from {self.source}: lengths must be in [1, "
                              f"{self.max_sequence_length}], got {min(self.lengths)}..{max(self.lengths)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"traffic profile batch_sizes {list(self.batch_sizes)}: give sizes >= 1, e.g. [1, 4]")

    def summary(self) -> dict[str, Any]:
        p50, p90, p99 = percentiles(self.lengths, (50, 90, 99))
        return {"texts": self.count, "mean": round(float(np.mean(self.lengths)), 1), "p50": p50, "p90": p90,
                "p99": p99, "max": max(self.lengths)}

    def describe(self) -> str:
        s = self.summary()
        return (f"{s['texts']} texts from {self.source}: tokens mean {s['mean']}, p50 {s['p50']:.0f}, "
                f"p90 {s['p90']:.0f}, p99 {s['p99']:.0f}, max {s['max']}")

    def draw(self, calls: int, seed: int = 0) -> list[int]:
        """`calls` lengths drawn from the sample, reshuffled so that consecutive calls change length as served
        traffic does (never the same length twice in a row when the sample has two or more)."""
        rng = np.random.default_rng(seed)
        drawn = [int(n) for n in rng.choice(np.asarray(self.lengths), size=calls)]
        for i in range(1, len(drawn)):
            if drawn[i] == drawn[i - 1] and len(set(self.lengths)) > 1:
                drawn[i] = next(n for n in rng.permutation(self.lengths) if n != drawn[i - 1])
        return drawn

    def mean_length(self) -> int:
        return max(1, round(float(np.mean(self.lengths))))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "count": self.count, "max_sequence_length": self.max_sequence_length,
                "batch_sizes": list(self.batch_sizes), "summary": self.summary(), "lengths": list(self.lengths)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrafficProfile:
        try:
            return cls(source=str(data["source"]), lengths=tuple(data["lengths"]),
                       max_sequence_length=int(data["max_sequence_length"]), count=int(data.get("count", 0)),
                       batch_sizes=tuple(data.get("batch_sizes", DEFAULT_BATCH_SIZES)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"traffic profile {dict(data)!r:.200}: {type(exc).__name__}: {exc}; rebuild the "
                              "engine") from exc


def token_lengths(tokenizer: Any, texts: Sequence[str], max_sequence_length: int) -> list[int]:
    """Tokens per text as the server tokenizes it (special tokens in, truncated at the limit)."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_sequence_length)
    return [len(ids) for ids in encoded["input_ids"]]


def profile_from_texts(tokenizer: Any, texts: Sequence[str], max_sequence_length: int, source: str,
                       batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES) -> TrafficProfile:
    """The profile of `texts`; a longer list is sampled evenly (deterministic), keeping its order."""
    texts = list(texts)
    if len(texts) > SAMPLE_SIZE:
        step = len(texts) / SAMPLE_SIZE
        texts_sampled = [texts[int(i * step)] for i in range(SAMPLE_SIZE)]
    else:
        texts_sampled = texts
    lengths = token_lengths(tokenizer, texts_sampled, max_sequence_length) if texts_sampled else []
    return TrafficProfile(source=source, lengths=tuple(lengths), max_sequence_length=max_sequence_length,
                          count=len(texts), batch_sizes=tuple(batch_sizes))


def check_length_buckets(buckets: Sequence[int], max_sequence_length: int) -> str:
    """Why `buckets` cannot pad requests ("" when they can): strictly increasing lengths >= 1 whose last is the
    longest sequence served, so every request has a bucket."""
    values = list(buckets)
    if not values:
        return ""
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in values):
        return f"must be integers >= 1, got {values}"
    if values != sorted(set(values)):
        return f"must be strictly increasing, got {values}"
    if values[-1] != max_sequence_length:
        return (f"must end at max_sequence_length ({max_sequence_length}) so every request has a bucket, "
                f"got {values}")
    return ""


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding `length` (the length itself when there are no buckets or it is past them)."""
    for bucket in buckets:
        if length <= bucket:
            return bucket
    return length
