"""Payload texts and synthetic token ids, and the pure output checks of the Triton request functions."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from engineforge.errors import ConfigError, DataError
from engineforge.loadtest.config import LoadTestConfig
from engineforge.loadtest.output_checks import check_logits_outputs, check_text_outputs, count_correct
from engineforge.loadtest.payloads import (
    DEFAULT_TEXTS,
    label_batches,
    load_labelled_texts,
    load_texts,
    text_batches,
    token_batches,
)
from engineforge.loadtest.records import ERR_SERVER, ERR_TIMEOUT, ERR_UNAVAILABLE
from engineforge.loadtest.request_factory import expected_labels, text_request_fn, token_request_fn
from engineforge.loadtest.triton_requests import classify_error, status_name


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
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    ids, mask = a[0]
    assert ids.shape == (3, 16) and ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.min() >= 1000 and ids.max() < 2000 and mask.all()


def test_token_batches_draw_lengths_and_pad_each_batch_to_its_longest_item():
    batches = token_batches(4, "8-40", seed=3)
    assert len(batches) == 64
    lengths = np.concatenate([mask.sum(axis=1) for _, mask in batches])
    assert lengths.min() >= 8 and lengths.max() <= 40 and len(set(lengths.tolist())) > 10
    for ids, mask in batches:
        assert ids.shape[1] == mask.sum(axis=1).max()  # as wide as the longest item, no wider
        assert (ids[mask == 0] == 0).all() and (ids[mask == 1] >= 1000).all()
        assert (np.diff(mask, axis=1) <= 0).all()  # padding only at the end


def test_labelled_texts_from_csv_and_jsonl(tmp_path):
    csv_file = tmp_path / "t.csv"
    csv_file.write_text('text,label\n"refund please, twice",billing\n\nwhere is my parcel,delivery\n')
    assert load_labelled_texts(csv_file) == (["refund please, twice", "where is my parcel"], ["billing", "delivery"])
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"text": "a", "label": 3}\n{"text": "b", "label": "x"}\n')
    assert load_labelled_texts(jsonl) == (["a", "b"], ["3", "x"])
    jsonl.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert load_labelled_texts(jsonl) == (["a", "b"], None)


@pytest.mark.parametrize("name, content, message", [
    ("t.csv", "body,label\nhi,x\n", "the CSV header must contain a 'text' column"),
    ("t.csv", "text,label\nhi,x\n,y\n", r't.csv:3: expected a non-empty string "text"'),
    ("t.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', "t.jsonl:2: no label, but other rows have one"),
])
def test_labelled_texts_refuse_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_labelled_texts(path)


def test_label_batches_follow_the_text_batches():
    texts, labels = ["a", "b", "c"], ["A", "B", "C"]
    batches, expected = text_batches(texts, 2), label_batches(labels, 2)
    assert len(batches) == len(expected) == 3
    for arr, want in zip(batches, expected, strict=True):
        assert tuple(v[0].decode().upper() for v in arr) == want


def test_count_correct_compares_each_item():
    labels = np.array([[b"billing"], [b"delivery"], [b"other"]], dtype=object)
    assert count_correct(labels, ("billing", "billing", "other")) == 2


def test_expected_labels_map_ids_to_names_and_refuse_unknown_ones():
    metadata = {"parameters": {"labels": '["billing", "delivery"]'}}
    config = LoadTestConfig(model="m", texts=("a", "b", "c"), labels=("1", "billing", "0"))
    assert expected_labels(config, metadata, False) == ["delivery", "billing", "billing"]
    bad = LoadTestConfig(model="m", texts=("a",), labels=("refunds",))
    with pytest.raises(ConfigError, match=r"expected labels \['refunds'\] are not labels of model 'm' \(its labels: "
                                          r"billing, delivery\)"):
        expected_labels(bad, metadata, False)
    with pytest.raises(ConfigError, match="not a text classifier"):
        expected_labels(config, metadata, True)


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
    assert status_name(InferenceServerException("x", status=status)) == (status.split(".")[1] if status else "UNKNOWN")


def test_factories_prebuild_inputs():
    fn = text_request_fn("m", ["a", "b"], batch_size=2)
    assert len(fn._batches) == 1 and fn._batches[0][0].shape() == [2, 1]
    fn = token_request_fn("m", seq_len=8, batch_size=2, token_type_ids=False)
    assert [i.name() for i in fn._batches[0]] == ["INPUT_IDS", "ATTENTION_MASK"]
    assert token_request_fn("m", seq_len=8)._batches[0][2].name() == "TOKEN_TYPE_IDS"
