"""Payload texts and synthetic token ids, and the pure output checks of the Triton request functions."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from engineforge.errors import DataError
from engineforge.loadtest.payloads import DEFAULT_TEXTS, load_texts, text_batches, token_batches
from engineforge.loadtest.records import ERR_SERVER, ERR_TIMEOUT, ERR_UNAVAILABLE
from engineforge.loadtest.triton_requests import (
    check_logits_outputs,
    check_text_outputs,
    classify_error,
    text_request_fn,
    token_request_fn,
)


def test_load_texts_reads_jsonl(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "hello", "label": 1}\n\n{"text": "bye"}\n')
    assert load_texts(path) == ["hello", "bye"]


def test_load_texts_reads_plain_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("first line\n\n  second line  \n")
    assert load_texts(path) == ["first line", "second line"]


@pytest.mark.parametrize(
    "content, message",
    [("", "has no texts"), ('{"text": "ok"}\n{broken\n', ":2: not valid JSON"), ('{"txt": "x"}\n', ":1: expected")],
)
def test_load_texts_reports_bad_files(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_texts(path)


def test_load_texts_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        load_texts(tmp_path / "nope.txt")


def test_text_batches_cycle_through_texts():
    batches = text_batches(["a", "b", "c"], batch_size=2)
    assert len(batches) == 3  # period 3 / gcd(3, 2)
    assert [b.shape for b in batches] == [(2, 1)] * 3
    flat = [x for b in batches for x in b[:, 0]]
    assert flat == [b"a", b"b", b"c", b"a", b"b", b"c"]
    assert batches[0].dtype == np.object_


def test_default_texts_are_varied():
    assert len(DEFAULT_TEXTS) >= 5 and len({len(t) for t in DEFAULT_TEXTS}) >= 5


def test_token_batches_are_deterministic_int64_in_range():
    a, b = token_batches(3, 16, seed=1), token_batches(3, 16, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == (3, 16) and a[0].dtype == np.int64
    assert a[0].min() >= 1000 and a[0].max() < 2000


def test_text_output_check_returns_first_label_and_rejects_short_outputs():
    labels = np.array([[b"refund"], [b"other"]], dtype=object)
    probs = np.zeros((2, 3), dtype=np.float32)
    assert check_text_outputs({"LABEL": labels, "PROBABILITIES": probs}, 2) == "refund"
    with pytest.raises(ValueError, match=r"PROBABILITIES has shape \[0\], expected 2"):
        check_text_outputs({"LABEL": labels, "PROBABILITIES": np.zeros(0, np.float32)}, 2)


def test_logits_output_check_returns_argmax():
    assert check_logits_outputs({"LOGITS": np.array([[0.1, 2.0, -1.0]], np.float32)}, 1) == "1"
    with pytest.raises(ValueError, match="LOGITS"):
        check_logits_outputs({"LOGITS": np.zeros((1, 3), np.float32)}, 2)


@pytest.mark.parametrize(
    "status, kind",
    [("StatusCode.DEADLINE_EXCEEDED", ERR_TIMEOUT), ("StatusCode.UNAVAILABLE", ERR_UNAVAILABLE), (None, ERR_SERVER)],
)
def test_classify_error(status, kind):
    assert classify_error(InferenceServerException("x", status=status)) == kind


def test_factories_prebuild_inputs():
    fn = text_request_fn("m", ["a", "b"], batch_size=2)
    assert len(fn._batches) == 1 and fn._batches[0][0].shape() == [2, 1]
    fn = token_request_fn("m", seq_len=8, batch_size=2, token_type_ids=False)
    assert [i.name() for i in fn._batches[0]] == ["INPUT_IDS", "ATTENTION_MASK"]
    assert token_request_fn("m", seq_len=8)._batches[0][2].name() == "TOKEN_TYPE_IDS"
