"""Length buckets: every call's sequence dim padded up to one of a few lengths, so a runtime that pays for each
new input shape sees only a few shapes.

Served text changes length on nearly every call, and OpenVINO's CPU plugin pays about 1 ms per shape change on
this machine; compiled once per bucket with a static sequence dim, alternating between buckets costs nothing
(measured on the demo engine: benchmarks/bench_shape_changes.py). Padding never changes an answer: padded
positions carry attention_mask 0, so attention ignores them, mean pooling skips them, and per-token outputs are
cut back to the caller's length. The one exception is a graph that quantizes activations per tensor at run time
(ONNX Runtime's dynamic int8): the padded positions' hidden states move the scale of every real token, so such
graphs are never bucketed (`bucketing_problem`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engineforge.stats import percentiles

from .traffic import TrafficProfile, bucket_for, check_length_buckets

# How a runtime applies buckets (registry.Runtime.bucketing): not at all, by padding one dynamic-shape engine, or
# with one engine compiled per bucket with a static sequence dim (the loader takes `sequence_length=`).
NO_BUCKETS, PAD_ONLY, STATIC_PER_BUCKET = "", "pad", "static"
SMALLEST_BUCKET = 16
BUCKET_STEP = 8
BUCKET_PERCENTILES = (33, 66, 90, 99)
# Ops that compute an activation scale over a whole tensor at run time: padding moves it for the real tokens.
PER_TENSOR_DYNAMIC_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "QAttention",
                                    "DynamicQuantizeLSTM", "MatMulIntegerToFloat"})


def candidate_buckets(profile: TrafficProfile) -> tuple[int, ...]:
    """The profile's 33rd, 66th, 90th and 99th percentile lengths rounded up to a multiple of 8 (at least 16), then
    max_sequence_length so that every request has a bucket: at most 5, each close above a common length.
    Powers of two padded too much on the demo (lengths 12..30 changing every call, OpenVINO, in ms per call over a
    fixed 21 tokens: 16/32/128 1.33-1.47x, 16/24/32/48/64/128 1.13-1.30x, unbucketed 1.35-1.39x)."""
    top = profile.max_sequence_length
    lengths = percentiles(profile.lengths, BUCKET_PERCENTILES)
    rounded = {min(top, max(SMALLEST_BUCKET, math.ceil(n / BUCKET_STEP) * BUCKET_STEP)) for n in lengths}
    return tuple(sorted(rounded | {top}))


def pad_feeds(feeds: Mapping[str, np.ndarray], names: Sequence[str], length: int) -> dict[str, np.ndarray]:
    """`names` right-padded with 0 along the sequence dim up to `length`: [PAD] ids, attention_mask 0 (the model
    ignores the position), token type 0."""
    out = {}
    for name in names:
        array = np.asarray(feeds[name])
        out[name] = np.pad(array, ((0, 0), (0, length - array.shape[1]))) if array.shape[1] < length else array
    return out


class BucketedEngine:
    """An engine whose calls are padded up to the smallest bucket holding them (one engine per bucket, or one for
    all); a call longer than every bucket (requests may carry up to the model's positions), or of more rows than
    `max_batch` (> 0), runs unpadded on `fallback`, opened on first use. Per-token outputs ([batch, seq, tags]) are
    cut back to the call's length."""

    def __init__(self, engines: Mapping[int, Any], fallback: Callable[[], Any], mode: str, max_batch: int = 0) -> None:
        if problem := check_length_buckets(sorted(engines), max(engines, default=0)):
            raise ValueError(f"length buckets {problem}")
        self.buckets = tuple(sorted(engines))
        self.mode = mode
        self.max_batch = max_batch
        self._engines = dict(engines)
        self._fallback_opener = fallback
        self._fallback: Any = None
        first = self._engines[self.buckets[0]]
        self.runtime: str = first.runtime
        self.input_names: tuple[str, ...] = tuple(first.input_names)
        self.output_names: tuple[str, ...] = tuple(first.output_names)
        self.path: Path | None = getattr(first, "path", None)

    def _engine(self, bucket: int) -> Any:
        if bucket in self._engines:
            return self._engines[bucket]
        if self._fallback is None:
            self._fallback = self._fallback_opener()
        return self._fallback

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        rows, length = (int(n) for n in np.shape(feeds["input_ids"])[:2])
        if self.max_batch and rows > self.max_batch:
            return np.asarray(self._engine(0).run(feeds))  # bucket 0 is never one: the unpadded fallback
        bucket = bucket_for(length, self.buckets)
        out = np.asarray(self._engine(bucket).run(pad_feeds(feeds, self.input_names, bucket)))
        if bucket > length and out.ndim == 3 and out.shape[1] == bucket:
            out = out[:, :length]  # per-token outputs: the padded positions are not the caller's
        return out

    def settings(self) -> dict[str, Any]:
        return self._engines[self.buckets[0]].settings() | {"length_buckets": list(self.buckets),
                                                             "bucketing": self.mode, "bucket_max_batch": self.max_batch}


def bucketed(open_engine: Callable[..., Any], buckets: Sequence[int], mode: str,
             max_batch: int = 0) -> BucketedEngine:
    """`open_engine(sequence_length=L)` per bucket (STATIC_PER_BUCKET) or `open_engine()` once (PAD_ONLY)."""
    if mode == STATIC_PER_BUCKET:
        return BucketedEngine({b: open_engine(sequence_length=b) for b in buckets}, open_engine, mode, max_batch)
    engine = open_engine()
    return BucketedEngine(dict.fromkeys(buckets, engine), lambda: engine, mode, max_batch)


def graph_op_types(path: str | Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {node.op_type for node in model.graph.node}


def bucketing_problem(path: str | Path) -> str:
    """Why the ONNX graph at `path` must not be bucketed ("" when padding cannot change its answers)."""
    dynamic = sorted(graph_op_types(path) & PER_TENSOR_DYNAMIC_OPS)
    if dynamic:
        return (f"the graph quantizes activations per tensor at run time ({', '.join(dynamic)}): padded positions "
                "would move every real token's scale and could change answers")
    return ""
