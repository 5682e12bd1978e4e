"""Triton's LLM request layout (the vLLM backend's; GenAI-Perf and Triton's generate clients send it), accepted
beside the model's own tensors so tools written for Triton LLMs can drive an engineforge LM unchanged.

    text_input                BYTES [1]   the prompt                                  -> TEXT
    sampling_parameters       BYTES [1]   JSON: max_tokens, temperature, top_p,       -> MAX_TOKENS, TEMPERATURE, ...
                                          top_k, seed, stop (numbers may be strings,
                                          as GenAI-Perf sends them)
    stream                    BOOL  [1]   true: a response per piece; false (default): one with the whole text
    exclude_input_in_output   BOOL  [1]   false: the prompt text precedes the generated text; default: true when
                                          streaming, false otherwise (false while streaming is refused)
    -> text_output            BYTES [1]   each piece's text (instead of TEXT_OUTPUT)

The defaults are the vLLM backend's, so a client written for it gets what it expects. Plain functions of numpy
arrays, unit-tested without Triton; the python-backend model only calls `translate`.
A sampling parameter the engine does not implement (min_tokens, ignore_eos, ...) is refused, never ignored: a
request must not get an answer to a question it did not ask.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from engineforge.lm.engine import InvalidGenerationRequest

INPUTS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "text_input": ("TYPE_STRING", "OSU", (1,)),
    "sampling_parameters": ("TYPE_STRING", "OSU", (1,)),
    "stream": ("TYPE_BOOL", "b", (1,)),
    "exclude_input_in_output": ("TYPE_BOOL", "b", (1,)),
}
TEXT_OUTPUT = "text_output"
OUTPUTS: dict[str, tuple[str, tuple[int, ...]]] = {TEXT_OUTPUT: ("TYPE_STRING", (1,))}
# sampling_parameters key -> (the model's own input, its numpy dtype)
_PARAMETERS: dict[str, tuple[str, Any]] = {
    "max_tokens": ("MAX_TOKENS", np.int32), "temperature": ("TEMPERATURE", np.float32),
    "top_p": ("TOP_P", np.float32), "top_k": ("TOP_K", np.int32), "seed": ("SEED", np.int64),
}


@dataclass(frozen=True)
class ResponseLayout:
    """How a request wants its responses: the text tensor's name, streamed or whole, prompt text first or not."""

    text_name: str = "TEXT_OUTPUT"
    stream: bool = True
    prefix: str = ""  # text sent before the first generated piece (the prompt, when not excluded)


NATIVE = ResponseLayout()


def translate(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], ResponseLayout]:
    """The request in the model's own tensors, and the layout its responses take. A request without any of the
    layout's tensors is returned as is; one that mixes both layouts is refused."""
    used = [name for name in INPUTS if name in arrays]
    if not used:
        return dict(arrays), NATIVE
    own = sorted(set(arrays) - set(INPUTS))
    if own:
        raise InvalidGenerationRequest(f"the request mixes Triton's LLM inputs {used} with the model's own {own}; "
                                       "send one layout: text_input + sampling_parameters, or TEXT + MAX_TOKENS ...")
    if "text_input" not in arrays:
        raise InvalidGenerationRequest("text_input is missing: Triton's LLM layout sends the prompt as text_input")
    out: dict[str, np.ndarray] = {"TEXT": arrays["text_input"]}
    if "sampling_parameters" in arrays:
        out |= _sampling(arrays["sampling_parameters"])
    stream = _flag(arrays, "stream", False)
    exclude = _flag(arrays, "exclude_input_in_output", stream)
    if stream and not exclude:
        raise InvalidGenerationRequest("exclude_input_in_output false is not allowed while streaming (as in Triton's "
                                       "vLLM backend): send stream false to get the prompt before the answer")
    prefix = "" if exclude else _prompt_text(arrays["text_input"])
    return out, ResponseLayout(TEXT_OUTPUT, stream, prefix)


def _flag(arrays: Mapping[str, np.ndarray], name: str, default: bool) -> bool:
    array = arrays.get(name)
    if array is None:
        return default
    if array.dtype.kind != "b" or array.size != 1:
        raise InvalidGenerationRequest(f"{name} must be one BOOL (shape [1]), got {array.dtype} {list(array.shape)}")
    return bool(array.reshape(-1)[0])


def _prompt_text(array: np.ndarray) -> str:
    value = array.reshape(-1)[0] if array.size else b""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _sampling(array: np.ndarray) -> dict[str, np.ndarray]:
    if array.dtype.kind not in "OSU" or array.size != 1:
        raise InvalidGenerationRequest("sampling_parameters must be one JSON string (BYTES, shape [1])")
    raw = array.reshape(-1)[0]
    try:
        values = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidGenerationRequest(f"sampling_parameters is not valid JSON ({exc})") from exc
    if not isinstance(values, dict):
        raise InvalidGenerationRequest("sampling_parameters must be a JSON object, e.g. {\"max_tokens\": 64}")
    unknown = sorted(set(values) - set(_PARAMETERS) - {"stop"})
    if unknown:
        raise InvalidGenerationRequest(f"sampling_parameters {unknown} are not supported by this engine; it "
                                       f"takes {sorted([*_PARAMETERS, 'stop'])}")
    out = {}
    for key, (name, dtype) in _PARAMETERS.items():
        if key in values and values[key] is not None:
            out[name] = np.array([_number(key, values[key], dtype)], dtype=dtype)
    stop = values.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise InvalidGenerationRequest("sampling_parameters stop must be a string or a list of strings")
        out["STOP"] = np.array([s.encode("utf-8") for s in stops], dtype=object)
    return out


def _number(key: str, value: Any, dtype: Any) -> Any:
    """A JSON number, or a string holding one (GenAI-Perf sends "max_tokens": "64")."""
    integer = np.issubdtype(dtype, np.integer)
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
        if integer and not number.is_integer():
            raise ValueError
    except (TypeError, ValueError):
        kind = "an integer" if integer else "a number"
        raise InvalidGenerationRequest(f"sampling_parameters {key}={value!r} must be {kind}") from None
    if integer and not np.iinfo(dtype).min <= number <= np.iinfo(dtype).max:  # numpy would wrap it silently
        raise InvalidGenerationRequest(f"sampling_parameters {key}={value!r} is out of range")
    return int(number) if integer else number
