"""A served LM's request parsing and limits without Triton: what the python-backend model accepts, refuses (with the
limit named) and derives at publish, and the tensors of one streamed piece."""

from __future__ import annotations

import numpy as np
import pytest

from engineforge.errors import ConfigError
from engineforge.lm.engine import InvalidGenerationRequest, SamplingParams
from engineforge.serve import lm_requests as lr


class CharTokenizer:
    """One token per character (ids = code points mod 200): enough to count prompt tokens."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) % 200 for c in text]}

    def __len__(self) -> int:
        return 200


TOKENIZER = CharTokenizer()
LIMITS = lr.derive_lm_limits(64, 4)


def text(value: str) -> np.ndarray:
    return np.array([value.encode()], dtype=object)


def parse(**arrays: np.ndarray) -> tuple[list[int], SamplingParams]:
    return lr.parse_request(arrays, LIMITS, TOKENIZER)


# ------------------------------------------------------------------------------------------------------- limits


def test_limits_derived_from_max_length_and_batch_with_reasons() -> None:
    assert (LIMITS.max_prompt_tokens, LIMITS.max_tokens, LIMITS.max_sequences, LIMITS.max_length) == (63, 63, 4, 64)
    assert "max_length 64 - 1" in LIMITS.reasons["max_prompt_tokens"]
    assert LIMITS.max_prompt_bytes == 63 * 64


def test_limits_round_trip_through_config_parameters() -> None:
    limits = lr.derive_lm_limits(128, 8, max_prompt_tokens=100, max_tokens=20, max_sequences=2)
    params = limits.parameters()
    assert params["lm.max_prompt_tokens"] == "100" and "chosen at publish" in params["why.lm.max_tokens"]
    as_triton = {key: {"string_value": value} for key, value in params.items()}  # how initialize() gets them
    assert lr.LMLimits.from_parameters(as_triton) == limits


@pytest.mark.parametrize("kwargs, match", [
    ({"max_prompt_tokens": 64}, "at most 63"),
    ({"max_tokens": 100}, "at most 63"),
])
def test_limits_can_only_tighten(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        lr.derive_lm_limits(64, 4, **kwargs)


def test_missing_limit_parameters_say_republish() -> None:
    with pytest.raises(ConfigError, match="republish"):
        lr.LMLimits.from_parameters({"lm.max_tokens": "5"})


# ------------------------------------------------------------------------------------------------------ parsing


def test_text_prompt_and_defaults() -> None:
    prompt, params = parse(TEXT=text("hello"))
    assert prompt == [ord(c) for c in "hello"]
    assert params == SamplingParams(max_tokens=min(SamplingParams.max_tokens, 63 - 0, 64 - 5))


def test_every_parameter_is_read() -> None:
    _, params = parse(TEXT=text("hi"), MAX_TOKENS=np.array([7], np.int32),
                      TEMPERATURE=np.array([0.7], np.float32), TOP_P=np.array([0.9], np.float32),
                      TOP_K=np.array([5], np.int32), SEED=np.array([42], np.int64),
                      STOP=np.array([b"\n", b"END"], dtype=object))
    assert params.max_tokens == 7 and params.top_k == 5 and params.seed == 42 and params.stop == ("\n", "END")
    assert params.temperature == pytest.approx(0.7) and params.top_p == pytest.approx(0.9)


def test_token_id_prompt() -> None:
    prompt, _ = parse(INPUT_IDS=np.array([1, 2, 3], np.int64))
    assert prompt == [1, 2, 3]


@pytest.mark.parametrize("arrays, match", [
    ({}, "exactly one of TEXT"),
    ({"TEXT": text("a"), "INPUT_IDS": np.array([1], np.int64)}, "exactly one of TEXT"),
    ({"TEXT": text("")}, "empty"),
    ({"TEXT": np.array([b"a", b"b"], dtype=object)}, "one prompt"),
    ({"TEXT": np.array([b"\xff"], dtype=object)}, "UTF-8"),
    ({"INPUT_IDS": np.array([1, 999], np.int64)}, "outside the vocabulary"),
    ({"INPUT_IDS": np.array([1.0], np.float32)}, "INT64"),
    ({"TEXT": text("x" * 64)}, "over max_prompt_tokens 63"),
    ({"TEXT": text("x" * (63 * 64 + 1))}, "over max_prompt_bytes"),
    ({"TEXT": text("hi"), "MAX_TOKENS": np.array([-1], np.int32)}, "max_tokens=-1"),
    ({"TEXT": text("hi"), "MAX_TOKENS": np.array([0], np.int32)}, "max_tokens=0"),
    ({"TEXT": text("hi"), "MAX_TOKENS": np.array([63], np.int32)}, "over the 62 this request may generate"),
    ({"TEXT": text("hi"), "MAX_TOKENS": np.array([1.5], np.float32)}, "MAX_TOKENS must be INT32"),
    ({"TEXT": text("hi"), "MAX_TOKENS": np.array([1, 2], np.int32)}, "exactly one value"),
    ({"TEXT": text("hi"), "TEMPERATURE": np.array([-0.5], np.float32)}, "temperature"),
    ({"TEXT": text("hi"), "TEMPERATURE": np.array([np.nan], np.float32)}, "temperature"),
    ({"TEXT": text("hi"), "TEMPERATURE": np.array([1], np.int32)}, "TEMPERATURE must be FP32"),
    ({"TEXT": text("hi"), "TOP_P": np.array([0.0], np.float32)}, "top_p"),
    ({"TEXT": text("hi"), "TOP_K": np.array([-2], np.int32)}, "top_k"),
    ({"TEXT": text("hi"), "SEED": np.array([-1], np.int64)}, "seed"),
    ({"TEXT": text("hi"), "STOP": np.array([b""], dtype=object)}, "non-empty"),
    ({"TEXT": text("hi"), "STOP": np.array([b"x"] * 17, dtype=object)}, "at most 16 stop strings"),
    ({"TEXT": text("hi"), "BOGUS": np.array([1])}, "unknown inputs"),
])
def test_bad_requests_are_refused_with_the_reason(arrays: dict, match: str) -> None:
    with pytest.raises(InvalidGenerationRequest, match=match):
        lr.parse_request(arrays, LIMITS, TOKENIZER)


def test_max_tokens_room_shrinks_with_the_prompt() -> None:
    _, params = parse(TEXT=text("x" * 60), MAX_TOKENS=np.array([4], np.int32))
    assert params.max_tokens == 4
    with pytest.raises(InvalidGenerationRequest, match="over the 4 this request may generate"):
        parse(TEXT=text("x" * 60), MAX_TOKENS=np.array([5], np.int32))


# ------------------------------------------------------------------------------------------------------ outputs


def test_piece_arrays() -> None:
    middle = lr.piece_arrays("héllo", [5, 6])
    assert set(middle) == {"TEXT_OUTPUT", "TOKEN_IDS"}
    assert middle["TEXT_OUTPUT"][0].decode() == "héllo" and middle["TOKEN_IDS"].dtype == np.int64
    final = lr.piece_arrays("", [], "eos", 3, 9)
    assert final["FINISH_REASON"][0] == b"eos" and final["TOKEN_IDS"].shape == (0,)
    assert int(final["PROMPT_TOKENS"][0]) == 3 and final["COMPLETION_TOKENS"].dtype == np.int32
    assert set(final) == set(lr.OUTPUTS)
