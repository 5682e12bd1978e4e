"""Length buckets never change an answer: every task, both CPU runtimes, padded vs unpadded in one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engineforge.engines import load_engine, registry
from engineforge.engines.buckets import bucketing_problem, candidate_buckets, pad_feeds
from engineforge.engines.traffic import TrafficProfile
from engineforge.errors import EngineLoadError
from tests.helpers.task_graphs import TASK_OUTPUTS, export_task_graph, mixed_feeds

BUCKETS = (16, 32, 64, 128)
# Single requests and merged batches, inside one bucket, across buckets, and up to the last bucket.
CALLS = ([5], [16], [17], [3, 11, 30], [40, 2], [100, 64, 9, 1])


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("task_graphs")
    return {task: export_task_graph(root / f"{task}.onnx", task) for task in TASK_OUTPUTS}


def _real(outputs: np.ndarray, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Per-token outputs on the real tokens only (the caller's padding is not an answer); others unchanged."""
    return outputs[feeds["attention_mask"].astype(bool)] if outputs.ndim == 3 else outputs


def _compare(path: Path, runtime: str, buckets: tuple[int, ...] = BUCKETS) -> list[tuple[np.ndarray, np.ndarray]]:
    plain, bucketed = load_engine(path, runtime, 1), load_engine(path, runtime, 1, length_buckets=buckets)
    pairs = []
    for seed, lengths in enumerate(CALLS):
        feeds = mixed_feeds(lengths, seed)
        unpadded, padded = plain.run(feeds), bucketed.run(feeds)
        assert padded.shape == unpadded.shape  # per-token outputs cut back to the caller's length
        pairs.append((_real(unpadded, feeds), _real(padded, feeds)))
    return pairs


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("task", list(TASK_OUTPUTS))
def test_padding_to_a_bucket_never_changes_an_answer(graphs: dict[str, Path], task: str, runtime: str) -> None:
    for unpadded, padded in _compare(graphs[task], runtime):
        np.testing.assert_allclose(padded, unpadded, atol=1e-4, rtol=0)  # measured: <= 1.5e-6
        assert (padded.argmax(-1) == unpadded.argmax(-1)).all()
        if task == "embeddings":
            cosine = (padded * unpadded).sum(-1) / np.linalg.norm(padded, axis=-1) / np.linalg.norm(unpadded, axis=-1)
            assert cosine.min() > 0.99999


def test_openvino_compiles_one_static_model_per_bucket(graphs: dict[str, Path]) -> None:
    engine = load_engine(graphs["text-classification"], "openvino", 1, length_buckets=(16, 128))
    assert engine.settings()["length_buckets"] == [16, 128] and engine.settings()["bucketing"] == "static"
    for bucket in (16, 128):
        shape = engine._engines[bucket].compiled.inputs[0].get_partial_shape()
        assert shape[1].is_static and shape[1].get_length() == bucket and shape[0].is_dynamic


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_call_longer_than_every_bucket_runs_unpadded(graphs: dict[str, Path], runtime: str) -> None:
    """Requests may carry up to the model's positions, past max_sequence_length: they run on the dynamic engine."""
    path = graphs["token-classification"]
    feeds = mixed_feeds([50, 7])
    expected = load_engine(path, runtime, 1).run(feeds)
    got = load_engine(path, runtime, 1, length_buckets=(16, 32)).run(feeds)
    assert got.shape == expected.shape == (2, 50, 5)
    np.testing.assert_allclose(_real(got, feeds), _real(expected, feeds), atol=1e-4, rtol=0)


def test_dynamic_int8_graphs_are_never_bucketed(graphs: dict[str, Path], tmp_path: Path) -> None:
    """ORT's dynamic int8 quantizes activations per tensor at run time: padding moved per-token logits by up to 1.7
    (cosine 0.969) on the tiny token classifier, so `bucketing_problem` refuses such graphs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dynamic = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(graphs["token-classification"]), str(dynamic), weight_type=QuantType.QInt8, per_channel=True)
    moved = max(float(np.abs(a - b).max()) for a, b in _compare(dynamic, "onnxruntime"))
    assert moved > 1e-2
    assert "per tensor at run time" in bucketing_problem(dynamic)
    assert all(bucketing_problem(path) == "" for path in graphs.values())


def test_a_runtime_without_bucketing_refuses_buckets(graphs: dict[str, Path]) -> None:
    @registry.register_runtime("no-buckets-toy", model_kind=registry.MODEL_ONNX, description="toy")
    def load(path: Path, threads: int) -> object:
        raise AssertionError("never opened")

    try:
        with pytest.raises(EngineLoadError, match="cannot pad to length buckets"):
            load_engine(graphs["embeddings"], "no-buckets-toy", 1, length_buckets=(16, 128))
    finally:
        del registry._RUNTIMES["no-buckets-toy"]


def test_candidate_buckets_sit_just_above_common_lengths_and_end_at_the_limit() -> None:
    short = TrafficProfile("t", tuple([12] * 50 + [20] * 45 + [30] * 5), 128)
    assert candidate_buckets(short) == (16, 24, 32, 128)
    long = TrafficProfile("t", tuple([40] * 50 + [300] * 50), 512)
    assert candidate_buckets(long) == (40, 304, 512)
    assert candidate_buckets(TrafficProfile("t", (8,), 16)) == (16,)
    assert candidate_buckets(TrafficProfile("t", (120, 127), 128)) == (128,)


def test_pad_feeds_pads_ids_mask_and_types_with_zeros() -> None:
    feeds = mixed_feeds([3, 2])
    padded = pad_feeds(feeds, ("input_ids", "attention_mask", "token_type_ids"), 8)
    assert all(a.shape == (2, 8) and not a[:, 3:].any() for a in padded.values())
    np.testing.assert_array_equal(padded["input_ids"][:, :3], feeds["input_ids"])


class _ShapeRecorder:
    runtime, input_names, output_names = "toy", ("input_ids", "attention_mask"), ("logits",)

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def run(self, feeds):
        self.shapes.append(tuple(feeds["input_ids"].shape))
        return np.zeros((feeds["input_ids"].shape[0], 2), dtype=np.float32)


def test_calls_of_more_rows_than_bucket_max_batch_run_unpadded_on_the_dynamic_engine() -> None:
    from engineforge.engines.buckets import STATIC_PER_BUCKET, BucketedEngine

    per_bucket, dynamic = {16: _ShapeRecorder(), 32: _ShapeRecorder()}, _ShapeRecorder()
    engine = BucketedEngine(per_bucket, lambda: dynamic, STATIC_PER_BUCKET, max_batch=1)
    for rows, length in ((1, 12), (4, 12), (1, 20), (2, 20)):
        ids = np.ones((rows, length), dtype=np.int64)
        assert engine.run({"input_ids": ids, "attention_mask": ids}).shape == (rows, 2)
    assert per_bucket[16].shapes == [(1, 16)] and per_bucket[32].shapes == [(1, 32)]
    assert dynamic.shapes == [(4, 12), (2, 20)]  # unpadded: batches formed under load keep their own length
