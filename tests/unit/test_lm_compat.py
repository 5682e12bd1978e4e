"""Triton's LLM request layout (text_input + sampling_parameters, the vLLM backend's) translated into the LM
model's own tensors: what GenAI-Perf and Triton's generate clients send."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engineforge.lm.engine import InvalidGenerationRequest
from engineforge.serve.lm_compat import NATIVE, TEXT_OUTPUT, translate
from engineforge.serve.lm_publish import lm_model_config
from engineforge.serve.lm_requests import derive_lm_limits, piece_arrays, read_params


def _text(value: str) -> np.ndarray:
    return np.array([value.encode()], dtype=object)


def _sampling(**values: object) -> np.ndarray:
    return _text(json.dumps(values))


def test_native_requests_pass_through_unchanged() -> None:
    arrays = {"TEXT": _text("hi"), "MAX_TOKENS": np.array([3], np.int32)}
    out, layout = translate(arrays)
    assert out.keys() == arrays.keys() and layout == NATIVE and layout.text_name == "TEXT_OUTPUT"


def test_genai_perf_request_becomes_the_same_native_request() -> None:
    # GenAI-Perf's vLLM converter sends max_tokens as a string, stream and exclude_input_in_output as BOOL.
    out, layout = translate({"text_input": _text("refunds are"), "stream": np.array([True]),
                             "exclude_input_in_output": np.array([True]),
                             "sampling_parameters": _sampling(max_tokens="48", temperature=0.5, top_k=3, seed=7,
                                                              top_p="0.9", stop=["\n"])})
    assert layout.text_name == TEXT_OUTPUT and layout.stream and layout.prefix == ""
    assert out["TEXT"][0] == b"refunds are" and out["MAX_TOKENS"].dtype == np.int32
    params = read_params(out, derive_lm_limits(256, 4), prompt_tokens=3)
    assert (params.max_tokens, params.temperature, params.top_k, params.seed, params.stop) == (48, 0.5, 3, 7, ("\n",))
    assert params.top_p == pytest.approx(0.9)


def test_stream_and_echoed_prompt_default_as_in_the_vllm_backend() -> None:
    _, default = translate({"text_input": _text("say")})
    assert not default.stream and default.prefix == "say"  # one response, the prompt first
    _, streamed = translate({"text_input": _text("say"), "stream": np.array([True])})
    assert streamed.stream and streamed.prefix == ""
    _, whole = translate({"text_input": _text("say"), "exclude_input_in_output": np.array([True])})
    assert not whole.stream and whole.prefix == ""


@pytest.mark.parametrize("arrays, words", [
    ({"text_input": _text("a"), "MAX_TOKENS": np.array([3], np.int32)}, "mixes"),
    ({"sampling_parameters": _sampling(max_tokens=3)}, "text_input is missing"),
    ({"text_input": _text("a"), "sampling_parameters": _sampling(min_tokens=5)}, "min_tokens"),
    ({"text_input": _text("a"), "sampling_parameters": _text("{not json")}, "not valid JSON"),
    ({"text_input": _text("a"), "sampling_parameters": _text("[1]")}, "JSON object"),
    ({"text_input": _text("a"), "sampling_parameters": _sampling(max_tokens="2.5")}, "integer"),
    ({"text_input": _text("a"), "sampling_parameters": _sampling(max_tokens=True)}, "integer"),
    ({"text_input": _text("a"), "sampling_parameters": _sampling(max_tokens=2**40)}, "out of range"),
    ({"text_input": _text("a"), "sampling_parameters": _sampling(stop=[1])}, "stop"),
    ({"text_input": _text("a"), "stream": np.array([1], np.int32)}, "BOOL"),
    ({"text_input": _text("a"), "stream": np.array([True]), "exclude_input_in_output": np.array([False])},
     "not allowed while streaming"),
], ids=["mixed-layouts", "no-prompt", "unsupported-parameter", "bad-json", "not-object", "fractional", "bool",
        "overflow", "stop-not-strings", "stream-not-bool", "echo-while-streaming"])
def test_bad_layout_requests_are_refused_not_ignored(arrays: dict, words: str) -> None:
    with pytest.raises(InvalidGenerationRequest, match=words):
        translate(arrays)


def test_published_config_declares_both_layouts_and_the_text_output_name() -> None:
    from engineforge.lm.bundle import LMEngineSpec

    spec = LMEngineSpec(runtime="torch", precision="fp32", family="llama", max_length=64, eos_token_ids=[2])
    config = lm_model_config("lm", spec)
    inputs = {t.name: (t.dtype, t.optional) for t in config.inputs}
    assert inputs["text_input"] == ("TYPE_STRING", True) and inputs["stream"] == ("TYPE_BOOL", True)
    assert inputs["TEXT"] == ("TYPE_STRING", True)
    assert {t.name for t in config.outputs} >= {"TEXT_OUTPUT", TEXT_OUTPUT}
    assert set(piece_arrays("x", [1], text_name=TEXT_OUTPUT)) == {TEXT_OUTPUT, "TOKEN_IDS"}
