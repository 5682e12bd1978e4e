"""How much one request may ask of the server: derived at publish, recorded in config.pbtxt, enforced by the models.

Why (issue 17): one 10 MB text took 21 s to tokenize (the tokenizer reads a whole text before truncating it to
`max_sequence_length` tokens) while a small request queued behind it waited as long. Every limit here is checked
before the expensive work, so an oversized request costs milliseconds and never delays the others.

Long texts (`long_texts`):
- "truncate" (default; the served contract was always "the first max_sequence_length tokens"): a text over
  `max_text_bytes` is cut at a space within its first `max_text_bytes` bytes, and only answered when that prefix
  still has more tokens than the model reads. Every supported tokenizer splits words at a space (WordPiece,
  byte-level BPE and SentencePiece alike), so the prefix's tokens are the whole text's first tokens, and the answer
  is the one the whole text would get. A text with no space to cut at, or whose prefix is too short, is refused.
- "refuse" (HF TEI without --auto-truncate): a text over `max_text_bytes` or over `max_tokens_per_text` tokens is
  refused instead of answered on a part of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from engineforge.errors import ConfigError

from .engine_spec import EngineSpec

TRUNCATE, REFUSE = "truncate", "refuse"
LONG_TEXT_POLICIES = (TRUNCATE, REFUSE)
DEFAULT_LONG_TEXTS = TRUNCATE
# A generous bound on the UTF-8 bytes one token covers: English averages about 4, a CJK character (3 bytes) is
# about one token. 16x headroom, so only pathological texts (megabytes of spaces, one endless "word") reach it.
BYTES_PER_TOKEN = 64
# HF TEI's default payload limit: the floor of the request size, so one long document can still be truncated.
MIN_REQUEST_BYTES = 2 * 1024 * 1024
PREFIX = "limit."  # config parameter "limit.<field>" holds the value, "why.limit.<field>" its reason
WHY = "why."
_INT_FIELDS = ("max_texts_per_request", "max_text_bytes", "max_request_bytes", "max_tokens_per_text",
               "max_tokens_per_sequence", "max_tokens_per_request")


class RequestLimitError(ValueError):
    """A request is over a limit; the message names the limit, its value and the request's."""


@dataclass(frozen=True)
class RequestLimits:
    """Per-request limits (see the module docstring); `reasons` maps each field to why it has its value."""

    max_texts_per_request: int  # texts in one request (TEI --max-client-batch-size)
    max_text_bytes: int  # UTF-8 bytes of one text read before it is cut (truncate) or refused (refuse)
    max_request_bytes: int  # UTF-8 bytes of all texts of one request (TEI's payload limit)
    max_tokens_per_text: int  # tokens the model reads of one text
    max_tokens_per_sequence: int  # tokens in one row of a token-id request
    max_tokens_per_request: int  # rows x tokens of a token-id request (TEI --max-batch-tokens)
    long_texts: str = DEFAULT_LONG_TEXTS
    reasons: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reasons", dict(self.reasons))
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"request limit {name} must be an integer >= 1, got {value!r}")
        if self.long_texts not in LONG_TEXT_POLICIES:
            raise ConfigError(f"long_texts must be one of {list(LONG_TEXT_POLICIES)}, got {self.long_texts!r}")

    def parameters(self) -> dict[str, str]:
        """Config `parameters` entries: `limit.<field>` = value and `why.limit.<field>` = reason."""
        values = {PREFIX + name: str(getattr(self, name)) for name in (*_INT_FIELDS, "long_texts")}
        return values | {WHY + PREFIX + name: reason for name, reason in self.reasons.items()}

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any]) -> RequestLimits | None:
        """Read back `parameters()` from a config's parameters (plain strings, or Triton's {"string_value": ...}
        as a python model's `initialize` gets them); None when the config records no limits (older publishes)."""
        def text(key: str) -> str | None:
            value = parameters.get(key)
            return value.get("string_value") if isinstance(value, Mapping) else value

        if not any(key.startswith(PREFIX) for key in parameters):
            return None
        missing = [name for name in (*_INT_FIELDS, "long_texts") if text(PREFIX + name) is None]
        if missing:
            raise ConfigError(f"config parameters lack {[PREFIX + m for m in missing]}; republish the model")
        try:
            values: dict[str, Any] = {name: int(text(PREFIX + name)) for name in _INT_FIELDS}
        except ValueError as exc:
            raise ConfigError(f"config parameter {PREFIX}*: not an integer ({exc}); republish the model") from exc
        reasons = {f.name: text(WHY + PREFIX + f.name) for f in fields(cls)}
        return cls(**values, long_texts=text(PREFIX + "long_texts"),
                   reasons={k: v for k, v in reasons.items() if v is not None})


def derive_request_limits(spec: EngineSpec, *, max_batch_size: int,
                          long_texts: str = DEFAULT_LONG_TEXTS) -> RequestLimits:
    """The limits of `spec` served with `max_batch_size`, each with its reason."""
    if max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
    tokens, positions = spec.max_sequence_length, spec.max_request_tokens
    text_bytes = tokens * BYTES_PER_TOKEN
    request_bytes = max(max_batch_size * text_bytes, MIN_REQUEST_BYTES)
    where = "the TensorRT profile's longest sequence" if spec.tensorrt is not None else "max_position_embeddings"
    over = ("cut at a space so the tokens the model reads are unchanged (refused when that cannot be done)"
            if long_texts == TRUNCATE else "refused")
    reasons = {
        "max_texts_per_request": f"{max_batch_size}: max_batch_size, the most rows one engine call takes",
        "max_text_bytes": f"{tokens} tokens x {BYTES_PER_TOKEN} bytes = {text_bytes}: max_sequence_length times a "
                          f"generous bound on the UTF-8 bytes per token (about 4 in English); a longer text is "
                          f"{over}, so no text costs more than this much tokenizing",
        "max_request_bytes": f"{request_bytes}: {max_batch_size} texts x {text_bytes} bytes, at least "
                             f"{MIN_REQUEST_BYTES} (HF TEI's payload limit) so one long document can be truncated",
        "max_tokens_per_text": f"{tokens}: max_sequence_length, the tokens the model reads of a text; "
                               + ("the rest is cut" if long_texts == TRUNCATE else "a longer text is refused"),
        "max_tokens_per_sequence": f"{positions}: {where}, the longest token-id row the engine can take",
        "max_tokens_per_request": f"{max_batch_size} x {positions} = {max_batch_size * positions}: max_batch_size "
                                  "rows of max_tokens_per_sequence tokens (HF TEI's --max-batch-tokens)",
        "long_texts": f"{long_texts}: " + ("answer on the first max_tokens_per_text tokens, as the model reads them"
                                           if long_texts == TRUNCATE else "never answer on a part of a text"),
    }
    return RequestLimits(max_texts_per_request=max_batch_size, max_text_bytes=text_bytes,
                         max_request_bytes=request_bytes, max_tokens_per_text=tokens,
                         max_tokens_per_sequence=positions, max_tokens_per_request=max_batch_size * positions,
                         long_texts=long_texts, reasons=reasons)


# ------------------------------------------------------------------------------------------------------ checks


def check_text_request(limits: RequestLimits, sizes: Sequence[int]) -> None:
    """Before any text is decoded: the number of texts and their total UTF-8 bytes (`sizes`, one per text)."""
    if len(sizes) > limits.max_texts_per_request:
        raise RequestLimitError(f"the request holds {len(sizes)} texts, over max_texts_per_request "
                                f"{limits.max_texts_per_request}; split it into smaller requests")
    total = sum(sizes)
    if total > limits.max_request_bytes:
        raise RequestLimitError(f"the request holds {total} bytes of text, over max_request_bytes "
                                f"{limits.max_request_bytes}; send fewer or shorter texts")


def fit_text(limits: RequestLimits, index: int, text: str) -> tuple[str, bool]:
    """The part of text #index to tokenize, and whether it was cut; raises RequestLimitError when it is too long
    to answer (refuse) or cannot be cut at a space within max_text_bytes (truncate)."""
    limit = limits.max_text_bytes
    if len(text) * 4 <= limit:  # UTF-8 takes at most 4 bytes a character: no need to count them
        return text, False
    size = len(text.encode("utf-8"))
    if size <= limit:
        return text, False
    if limits.long_texts == REFUSE:
        raise RequestLimitError(f"text #{index} is {size} bytes, over max_text_bytes {limit} (long_texts is "
                                f"'refuse'); send at most {limit} bytes per text")
    # The first `limit` bytes plus one (a space right after them is a cut too); "ignore" drops only a character
    # split by the byte cut, the text itself being valid UTF-8.
    window = text[: limit + 1].encode("utf-8")[: limit + 1].decode("utf-8", "ignore")
    cut = window.rfind(" ")
    while cut > 0 and window[cut - 1].isspace():  # the prefix must end in a word, not in a run of spaces
        cut = window.rfind(" ", 0, cut)
    if cut <= 0:
        raise RequestLimitError(f"text #{index} is {size} bytes, over max_text_bytes {limit}, and has no space "
                                f"within its first {limit} bytes to cut it at; send at most {limit} bytes per text")
    return window[:cut], True


def check_text_tokens(limits: RequestLimits, index: int, *, cut: bool, overflowed: bool, tokens: int,
                      max_length: int) -> None:
    """After tokenizing (truncated to `max_length`): `overflowed` says the text had more tokens than that."""
    if cut and not overflowed:  # the prefix is shorter than what the model reads: its answer could differ
        raise RequestLimitError(
            f"text #{index} is over max_text_bytes {limits.max_text_bytes} and its first {limits.max_text_bytes} "
            f"bytes make only {tokens} tokens, fewer than the {max_length} the model reads, so cutting it would "
            f"change the answer; send at most {limits.max_text_bytes} bytes per text")
    if overflowed and limits.long_texts == REFUSE:
        raise RequestLimitError(f"text #{index} has more than max_tokens_per_text {max_length} tokens (long_texts "
                                f"is 'refuse'); send shorter texts")


def check_token_request(max_tokens_per_request: int, rows: int, tokens: int) -> None:
    """A token-id request of `rows` x `tokens` (RequestLimits.max_tokens_per_request)."""
    if rows * tokens > max_tokens_per_request:
        raise RequestLimitError(f"the request holds {rows} x {tokens} = {rows * tokens} tokens, over "
                                f"max_tokens_per_request {max_tokens_per_request}; send fewer rows")


def limits_for_model(model_config: Mapping[str, Any], spec: EngineSpec) -> RequestLimits:
    """A python model's limits (`initialize`, model config JSON): those its config records, else derived from its
    engine.json and max_batch_size (a repository published before limits were recorded)."""
    recorded = RequestLimits.from_parameters(model_config.get("parameters") or {})
    return recorded or derive_request_limits(spec, max_batch_size=max(1, int(model_config.get("max_batch_size", 1))))
