"""What a served LM accepts: its tensors, its limits (derived at publish, recorded in config.pbtxt) and the parsing
of one generation request into prompt token ids and `SamplingParams`, all plain functions of numpy arrays so they are
unit-tested without Triton. The python-backend model (triton/lm_model.py) only moves tensors in and out.

Every check runs before the expensive work (tokenizing, prefill): a prompt's UTF-8 bytes are bounded before it is
tokenized (as request_limits.py does for encoders), its tokens before it reaches the engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engineforge.engines.request_limits import BYTES_PER_TOKEN
from engineforge.errors import ConfigError
from engineforge.lm.engine import InvalidGenerationRequest, SamplingParams

# Input tensor -> (Triton dtype, numpy kinds accepted, dims). max_batch_size is 0: dims are the whole shape.
INPUTS: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "TEXT": ("TYPE_STRING", "OSU", (1,)),
    "INPUT_IDS": ("TYPE_INT64", "iu", (-1,)),
    "MAX_TOKENS": ("TYPE_INT32", "iu", (1,)),
    "TEMPERATURE": ("TYPE_FP32", "f", (1,)),
    "TOP_P": ("TYPE_FP32", "f", (1,)),
    "TOP_K": ("TYPE_INT32", "iu", (1,)),
    "SEED": ("TYPE_INT64", "iu", (1,)),
    "STOP": ("TYPE_STRING", "OSU", (-1,)),
}
# The piece's text is TEXT_OUTPUT: an input and an output may not share a name (model_config.ModelConfig).
OUTPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "TEXT_OUTPUT": ("TYPE_STRING", (1,)),
    "TOKEN_IDS": ("TYPE_INT64", (-1,)),
    "FINISH_REASON": ("TYPE_STRING", (1,)),
    "PROMPT_TOKENS": ("TYPE_INT32", (1,)),
    "COMPLETION_TOKENS": ("TYPE_INT32", (1,)),
}
# Triton's gRPC stream carries an error's message but not its code: the model starts the messages of its own
# failures (never the request's fault) with these, so the client can tell a server failure from a refused request.
ENGINE_FAILED, INTERNAL_ERROR = "the LM engine failed", "internal error"
PREFIX = "lm."  # config parameter "lm.<field>" holds a limit, "why.lm.<field>" its reason
WHY = "why."
MAX_STOP_STRINGS = 16  # like OpenAI's API (4) and vLLM (unbounded), a small bound: each is searched every step
MAX_STOP_CHARS = 256


@dataclass(frozen=True)
class LMLimits:
    """What one request may ask of a served LM; `reasons` maps each field to why it has its value."""

    max_prompt_tokens: int  # tokens of one prompt
    max_tokens: int  # tokens one request may generate (further bounded by max_length - prompt)
    max_sequences: int  # sequences the engine decodes together; more wait in its queue
    max_length: int  # prompt + generated tokens, the engine's positions
    reasons: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reasons", dict(self.reasons))
        for name in ("max_prompt_tokens", "max_tokens", "max_sequences", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"LM limit {name} must be an integer >= 1, got {value!r}")
        if self.max_prompt_tokens >= self.max_length:
            raise ConfigError(f"max_prompt_tokens {self.max_prompt_tokens} leaves no room to generate within "
                              f"max_length {self.max_length}; use at most {self.max_length - 1}")

    @property
    def max_prompt_bytes(self) -> int:
        """UTF-8 bytes of a prompt text read at most: a generous bound on what max_prompt_tokens can cover."""
        return self.max_prompt_tokens * BYTES_PER_TOKEN

    def parameters(self) -> dict[str, str]:
        names = ("max_prompt_tokens", "max_tokens", "max_sequences", "max_length")
        values = {PREFIX + name: str(getattr(self, name)) for name in names}
        return values | {WHY + PREFIX + name: reason for name, reason in self.reasons.items()}

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> LMLimits:
        """Read back `parameters()` (plain strings, or Triton's {"string_value": ...} as `initialize` gets them)."""
        def text(key: str) -> str | None:
            value = parameters.get(key)
            return value.get("string_value") if isinstance(value, Mapping) else value

        names = ("max_prompt_tokens", "max_tokens", "max_sequences", "max_length")
        missing = [PREFIX + n for n in names if text(PREFIX + n) is None]
        if missing:
            raise ConfigError(f"config parameters lack {missing}; republish the LM with publish_lm_bundle")
        try:
            return cls(**{n: int(text(PREFIX + n)) for n in names})  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(f"config parameter {PREFIX}*: not an integer ({exc}); republish the LM") from exc


def derive_lm_limits(max_length: int, max_batch: int, *, max_prompt_tokens: int | None = None,
                     max_tokens: int | None = None, max_sequences: int | None = None) -> LMLimits:
    """The limits of an engine of `max_length` positions decoding `max_batch` sequences; explicit values may only
    tighten them."""
    prompt = max_prompt_tokens or max_length - 1
    generate = max_tokens or max_length - 1
    sequences = max_sequences or max_batch
    if prompt > max_length - 1 or generate > max_length - 1:
        raise ConfigError(f"max_prompt_tokens {prompt} / max_tokens {generate}: the engine holds {max_length} "
                          f"positions (prompt + generated), so each can be at most {max_length - 1}")
    reasons = {
        "max_prompt_tokens": f"{prompt}: " + ("chosen at publish" if max_prompt_tokens else
                                              f"max_length {max_length} - 1, leaving room for one generated token"),
        "max_tokens": f"{generate}: " + ("chosen at publish" if max_tokens else f"max_length {max_length} - 1")
                      + "; a request also gets at most max_length - its prompt tokens",
        "max_sequences": f"{sequences}: " + ("chosen at publish" if max_sequences else
                                             "the bundle's max_batch, the sequences its engine decodes together")
                         + "; more requests wait in the engine's queue",
        "max_length": f"{max_length}: the bundle's max_length, prompt + generated tokens per sequence",
    }
    return LMLimits(prompt, generate, sequences, max_length, reasons)


# ------------------------------------------------------------------------------------------------------ parsing


def _scalar(name: str, array: np.ndarray | None) -> Any:
    """The one value of an optional [1] input, checked against its dtype (Triton checks dtypes too; this is the
    contract for any caller)."""
    if array is None:
        return None
    dtype, kinds, _ = INPUTS[name]
    if array.dtype.kind not in kinds:
        raise InvalidGenerationRequest(f"{name} must be {dtype.removeprefix('TYPE_')}, got {array.dtype}")
    if array.size != 1:
        raise InvalidGenerationRequest(f"{name} must hold exactly one value (shape [1]), got shape {list(array.shape)}")
    value = array.reshape(-1)[0]
    return float(value) if array.dtype.kind == "f" else int(value)


def _strings(name: str, array: np.ndarray) -> list[str]:
    if array.dtype.kind not in INPUTS[name][1]:
        raise InvalidGenerationRequest(f"{name} must be STRING (BYTES), got {array.dtype}")
    out = []
    for value in array.reshape(-1):
        try:
            out.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        except UnicodeDecodeError as exc:
            raise InvalidGenerationRequest(f"{name} is not valid UTF-8 ({exc}); send UTF-8 text") from exc
    return out


def read_prompt(arrays: Mapping[str, np.ndarray | None], limits: LMLimits, tokenizer: Any) -> list[int]:
    """The prompt's token ids: TEXT tokenized with the bundle's tokenizer, or INPUT_IDS as sent (exactly one)."""
    text, ids = arrays.get("TEXT"), arrays.get("INPUT_IDS")
    if (text is None) == (ids is None):
        raise InvalidGenerationRequest("send exactly one of TEXT (a prompt string) or INPUT_IDS (its token ids)")
    if ids is not None:
        if ids.dtype.kind not in "iu" or ids.ndim != 1:
            raise InvalidGenerationRequest(f"INPUT_IDS must be INT64 of shape [n], got {ids.dtype} "
                                           f"{list(ids.shape)}")
        prompt = [int(t) for t in ids]
        vocab = len(tokenizer)
        if any(t < 0 or t >= vocab for t in prompt):
            raise InvalidGenerationRequest(f"INPUT_IDS holds ids outside the vocabulary [0, {vocab}); tokenize "
                                           "with the model's own tokenizer")
    else:
        if text.size != 1:
            raise InvalidGenerationRequest(f"TEXT must hold one prompt (shape [1]), got shape {list(text.shape)}")
        raw = text.reshape(-1)[0]
        size = len(raw) if isinstance(raw, bytes) else len(str(raw).encode("utf-8"))
        if size > limits.max_prompt_bytes:  # bounded before tokenizing: a huge text costs nothing
            raise InvalidGenerationRequest(
                f"the prompt is {size} bytes, over max_prompt_bytes {limits.max_prompt_bytes} (max_prompt_tokens "
                f"{limits.max_prompt_tokens} x {BYTES_PER_TOKEN}); send a shorter prompt")
        prompt = encode_prompt(tokenizer, _strings("TEXT", text)[0])
    if not prompt:
        raise InvalidGenerationRequest("the prompt is empty: send at least one token of text")
    if len(prompt) > limits.max_prompt_tokens:
        raise InvalidGenerationRequest(f"the prompt has {len(prompt)} tokens, over max_prompt_tokens "
                                       f"{limits.max_prompt_tokens}; send a shorter prompt")
    return prompt


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """How the served model (and anything comparing with it) turns a prompt into token ids."""
    return [int(t) for t in tokenizer(text, add_special_tokens=True)["input_ids"]]


def read_params(arrays: Mapping[str, np.ndarray | None], limits: LMLimits, prompt_tokens: int) -> SamplingParams:
    """SamplingParams from the optional inputs; max_tokens defaults to what fits (at most SamplingParams' own)."""
    room = min(limits.max_tokens, limits.max_length - prompt_tokens)
    max_tokens = _scalar("MAX_TOKENS", arrays.get("MAX_TOKENS"))
    if max_tokens is None:
        max_tokens = min(SamplingParams.max_tokens, room)
    elif max_tokens > room:
        raise InvalidGenerationRequest(
            f"max_tokens {max_tokens} is over the {room} this request may generate (max_tokens limit "
            f"{limits.max_tokens}, max_length {limits.max_length} - {prompt_tokens} prompt tokens); lower it")
    values: dict[str, Any] = {"max_tokens": max_tokens}
    for name, key in (("TEMPERATURE", "temperature"), ("TOP_P", "top_p"), ("TOP_K", "top_k"), ("SEED", "seed")):
        value = _scalar(name, arrays.get(name))
        if value is not None:
            values[key] = value
    if "temperature" in values and not math.isfinite(values["temperature"]):
        raise InvalidGenerationRequest(f"temperature={values['temperature']!r}: must be a finite number >= 0")
    stop = arrays.get("STOP")
    if stop is not None:
        strings = _strings("STOP", stop)
        if len(strings) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS for s in strings):
            raise InvalidGenerationRequest(f"STOP: at most {MAX_STOP_STRINGS} stop strings of at most "
                                           f"{MAX_STOP_CHARS} characters each")
        values["stop"] = tuple(strings)
    return SamplingParams(**values)  # validates the values (InvalidGenerationRequest)


def parse_request(arrays: Mapping[str, np.ndarray | None], limits: LMLimits,
                  tokenizer: Any) -> tuple[list[int], SamplingParams]:
    """(prompt ids, params) of one request's input arrays (absent inputs None); InvalidGenerationRequest names what
    is wrong and the limit it is over."""
    unknown = sorted(set(arrays) - set(INPUTS))
    if unknown:
        raise InvalidGenerationRequest(f"unknown inputs {unknown}; the model takes {sorted(INPUTS)}")
    prompt = read_prompt(arrays, limits, tokenizer)
    return prompt, read_params(arrays, limits, len(prompt))


def piece_arrays(text: str, token_ids: list[int], finish_reason: str | None = None, prompt_tokens: int = 0,
                 completion_tokens: int = 0, text_name: str = "TEXT_OUTPUT") -> dict[str, np.ndarray]:
    """The output tensors of one streamed piece; the final one (finish_reason set) also carries the counts.
    `text_name`: text_output for a request in Triton's LLM layout (lm_compat.py)."""
    arrays = {text_name: np.array([text.encode("utf-8")], dtype=object),
              "TOKEN_IDS": np.array(token_ids, dtype=np.int64)}
    if finish_reason is not None:
        arrays |= {"FINISH_REASON": np.array([finish_reason.encode()], dtype=object),
                   "PROMPT_TOKENS": np.array([prompt_tokens], dtype=np.int32),
                   "COMPLETION_TOKENS": np.array([completion_tokens], dtype=np.int32)}
    return arrays
