"""Engine inference logic without Triton: validation, merge/split, softmax, and a real tiny engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engineforge.engines.engine_spec import EngineSpec
from engineforge.serve import engine_runtime as rt
from tests.helpers.tiny_engine import TINY_LABELS, reference_logits, tiny_bundle  # noqa: F401


def ids_and_mask(*lengths: int, pad_to: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    width = pad_to or max(lengths)
    ids = np.zeros((len(lengths), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(1000, 20000, length)
        mask[row, :length] = 1
    return ids, mask


def test_validate_accepts_and_normalises():
    ids, mask = ids_and_mask(3, 5)
    arrays = rt.validate_request_arrays(ids.astype(np.int32), mask, max_positions=8, vocab_size=30522)
    assert arrays.input_ids.dtype == np.int64 and arrays.batch_size == 2 and arrays.token_type_ids is None


@pytest.mark.parametrize(
    ("ids", "mask", "types", "message"),
    [
        (np.ones((2,), np.int64), np.ones((2,), np.int64), None, "rank 2"),
        (np.ones((1, 9), np.int64), np.ones((1, 9), np.int64), None, "exceeds the engine's limit of 8 tokens"),
        (np.ones((1, 4), np.int64), np.ones((1, 3), np.int64), None, "differs from input_ids shape"),
        (np.ones((1, 0), np.int64), np.ones((1, 0), np.int64), None, "empty sequence"),
        (np.ones((2, 3), np.int64), np.array([[1, 1, 0], [0, 0, 0]]), None, r"row\(s\) \[1\]"),
        (np.full((1, 3), 40000), np.ones((1, 3), np.int64), None, r"\[0, 30522\)"),
        (np.full((1, 3), -1), np.ones((1, 3), np.int64), None, "input_ids must be in"),
        (np.ones((1, 3), np.float32), np.ones((1, 3), np.int64), None, "must hold integers"),
        (np.ones((1, 3), np.int64), np.full((1, 3), 2), None, "only 0 and 1"),
        (np.ones((1, 3), np.int64), np.ones((1, 3), np.int64), np.ones((1, 2), np.int64), "token_type_ids shape"),
    ],
)
def test_validate_rejects_with_clear_message(ids, mask, types, message):
    with pytest.raises(rt.InvalidRequestError, match=message):
        rt.validate_request_arrays(ids, mask, types, max_positions=8, vocab_size=30522)
    assert issubclass(rt.InvalidRequestError, ValueError)


@pytest.mark.parametrize(
    ("types", "type_vocab_size", "takes", "message"),
    [
        ([[0, 0, -1]], 2, True, r"token_type_ids must be in \[0, 2\) \(type_vocab_size 2\); got -1 at row 0, position"),
        ([[0, 2, 0]], 2, True, r"must be in \[0, 2\) \(type_vocab_size 2\); got 2 at row 0, position 1"),
        ([[0, 1, 0]], 1, True, r"must be 0: this model has no token types \(type_vocab_size 1\); got 1 at row 0"),
        ([[0, 0, 10**6]], 1, False, r"must be 0: this model has no token types \(its engine takes no token_type_ids\)"),
        ([[0, 1, 0]], None, False, "must be 0: this model has no token types"),  # an engine.json without the size
        ([[0, 0, -5]], None, True, r"token_type_ids must be >= 0; got -5 at row 0, position 2"),
    ],
)
def test_token_types_outside_the_model_s_types_are_refused_readably(types, type_vocab_size, takes, message):
    ids, mask = ids_and_mask(3)
    with pytest.raises(rt.InvalidRequestError, match=message):
        rt.validate_request_arrays(ids, mask, np.array(types), max_positions=8, type_vocab_size=type_vocab_size,
                                   takes_token_types=takes)
    zeros = rt.validate_request_arrays(ids, mask, np.zeros_like(ids), max_positions=8, type_vocab_size=1,
                                       takes_token_types=False)
    assert zeros.token_type_ids is not None


def test_rows_times_tokens_are_bounded_and_a_lost_batch_dimension_is_explained():
    ids, mask = ids_and_mask(4, 4)
    rt.validate_request_arrays(ids, mask, max_positions=8, max_tokens_per_request=8)
    with pytest.raises(rt.InvalidRequestError, match="2 x 4 = 8 tokens, over max_tokens_per_request 7"):
        rt.validate_request_arrays(ids, mask, max_positions=8, max_tokens_per_request=7)
    with pytest.raises(rt.InvalidRequestError, match=r"got shape \[3\] \(a batch dimension of 0 or"):
        rt.validate_request_arrays(np.ones(3, np.int64), np.ones(3, np.int64), max_positions=8)


def test_merge_pads_to_longest_and_split_restores():
    a = rt.RequestArrays(np.array([[5, 6, 7]]), np.array([[1, 1, 1]]), np.array([[0, 1, 1]]))
    b = rt.RequestArrays(np.array([[8], [9]]), np.array([[1], [1]]))
    merged, sizes = rt.merge_requests([a, b])
    assert sizes == [1, 2]
    np.testing.assert_array_equal(merged["input_ids"], [[5, 6, 7], [8, 0, 0], [9, 0, 0]])
    np.testing.assert_array_equal(merged["attention_mask"], [[1, 1, 1], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(merged["token_type_ids"], [[0, 1, 1], [0, 0, 0], [0, 0, 0]])
    parts = rt.split_outputs(np.arange(6).reshape(3, 2), sizes)
    assert [p.tolist() for p in parts] == [[[0, 1]], [[2, 3], [4, 5]]]
    with pytest.raises(ValueError, match="do not add up"):
        rt.split_outputs(np.zeros((3, 2)), [1, 1])


def test_softmax_and_labels():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    probs = rt.softmax(logits)
    assert np.isfinite(probs).all() and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[1], [1 / 3] * 3, rtol=1e-6)
    assert rt.labels_for(np.array([[0.1, 0.7, 0.2]]), ["a", "b", "c"]) == ("b",)


def test_run_batch_equals_direct_onnxruntime(tiny_bundle):  # noqa: F811
    spec = EngineSpec.load(tiny_bundle)
    engine = rt.open_bundle_engine(tiny_bundle, spec)
    ids_a, mask_a = ids_and_mask(7, 3, seed=1)
    ids_b, mask_b = ids_and_mask(12, seed=2)
    requests = [
        rt.validate_request_arrays(ids_a, mask_a, max_positions=128),
        rt.validate_request_arrays(ids_b, mask_b, np.zeros_like(ids_b), max_positions=128),
    ]
    results = rt.run_batch(engine, spec, requests)
    for (ids, mask), result in zip([(ids_a, mask_a), (ids_b, mask_b)], results, strict=True):
        assert isinstance(result, rt.ClassifiedRows)
        expected = reference_logits(tiny_bundle, ids, mask)
        np.testing.assert_allclose(result.logits, expected, atol=1e-5)
        np.testing.assert_allclose(result.probabilities, rt.softmax(expected), atol=1e-5)
        assert result.labels == tuple(TINY_LABELS[i] for i in expected.argmax(axis=1))


def test_run_batch_isolates_a_request_the_engine_rejects(tiny_bundle):  # noqa: F811
    # Without vocab_size the out-of-range id reaches ONNX Runtime, which fails the merged call;
    # the retry must answer the good request and blame only the bad one.
    spec = dataclasses.replace(EngineSpec.load(tiny_bundle), vocab_size=None)
    engine = rt.open_bundle_engine(tiny_bundle, spec)
    good_ids, good_mask = ids_and_mask(5)
    good = rt.validate_request_arrays(good_ids, good_mask, max_positions=128)
    bad = rt.validate_request_arrays(np.full((1, 4), 10**6), np.ones((1, 4), np.int64), max_positions=128)
    outcome_good, outcome_bad = rt.run_batch(engine, spec, [good, bad])
    assert isinstance(outcome_bad, Exception)
    np.testing.assert_allclose(outcome_good.logits, reference_logits(tiny_bundle, good_ids, good_mask), atol=1e-5)


def test_open_bundle_engine_checks_names(tiny_bundle):  # noqa: F811
    spec = dataclasses.replace(EngineSpec.load(tiny_bundle), input_names=("input_ids", "attention_mask"))
    from engineforge.errors import EngineLoadError

    with pytest.raises(EngineLoadError, match=r"do not match engine\.json"):
        rt.open_bundle_engine(tiny_bundle, spec)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_bundle_engine_is_opened_with_engine_json_s_length_buckets(tiny_bundle, runtime):  # noqa: F811
    spec = dataclasses.replace(EngineSpec.load(tiny_bundle), runtime=runtime, length_buckets=(8, 16, 32))
    engine = rt.open_bundle_engine(tiny_bundle, spec)
    assert engine.settings()["length_buckets"] == [8, 16, 32]
    for length, seed in ((5, 1), (12, 2), (40, 3)):  # inside buckets, and past the last one (unpadded)
        ids, mask = ids_and_mask(length, 2, seed=seed)
        (result,) = rt.run_batch(engine, spec, [rt.validate_request_arrays(ids, mask, max_positions=128)])
        np.testing.assert_allclose(result.logits, reference_logits(tiny_bundle, ids, mask), atol=1e-4)
