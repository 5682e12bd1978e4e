"""Text -> token id tensors, independent of Triton (used by `triton/tokenizer_model.py` and tests)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engineforge.errors import RepositoryError

from .request_limits import RequestLimitError, RequestLimits, check_text_request, check_text_tokens, fit_text


class TokenizationError(ValueError):
    """A request's text cannot be tokenized; the message is sent back to that request's client."""


def load_tokenizer(path: str | os.PathLike[str]):  # -> transformers.PreTrainedTokenizerFast
    """Load the fast tokenizer saved in a bundle's `tokenizer/` directory (offline only)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise RepositoryError(f"{path}: tokenizer directory missing; republish the engine bundle")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True, local_files_only=True)
    except Exception as exc:
        raise RepositoryError(f"{path}: cannot load the tokenizer ({exc})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise RepositoryError(f"{path}: only a slow tokenizer could be loaded; add tokenizer.json to the bundle")
    return tokenizer


def _byte_size(item: object) -> int:
    if isinstance(item, bytes | bytearray | np.bytes_):
        return len(item)
    return len(item.encode("utf-8", "replace")) if isinstance(item, str) else 0


def decode_texts(raw: np.ndarray | Sequence[bytes | str], *, batched: bool = False,
                 limits: RequestLimits | None = None) -> list[str]:
    """Turn a Triton TYPE_STRING tensor ([batch, 1] of bytes) into validated Python strings. `batched` (the
    served model): only [batch, 1]; Triton 2.51 hands a request with batch dimension 0 (or 2^32) on unbatched.
    `limits`: the number of texts and their total bytes are checked before anything is decoded."""
    array = np.asarray(raw, dtype=object)
    if batched and (array.ndim != 2 or array.shape[1] != 1):
        raise TokenizationError(f"TEXT must have shape [batch, 1] with batch >= 1, got {list(np.shape(raw))}")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise TokenizationError(f"TEXT must have shape [batch, 1], got {list(np.shape(raw))}")
    if array.size == 0:
        raise TokenizationError("the request holds no texts (batch size 0)")
    if limits is not None:
        try:
            check_text_request(limits, [_byte_size(item) for item in array])
        except RequestLimitError as exc:
            raise TokenizationError(str(exc)) from exc
    texts = []
    for index, item in enumerate(array):
        if isinstance(item, bytes | bytearray | np.bytes_):
            try:
                item = bytes(item).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TokenizationError(
                    f"text #{index} is not valid UTF-8 ({exc.reason} at byte {exc.start}); send UTF-8 encoded text"
                ) from exc
        elif not isinstance(item, str):
            raise TokenizationError(f"text #{index} must be a string, got {type(item).__name__}")
        if not item.strip():
            raise TokenizationError(f"text #{index} is empty or whitespace only; send some text to classify")
        texts.append(item)
    return texts


def tokenize_batch(tokenizer, texts: Sequence[str], max_length: int, with_offsets: bool = False
                   ) -> dict[str, np.ndarray]:
    """Tokenize with truncation to `max_length`, padded to the longest text; int64 [batch, seq] arrays.
    `with_offsets` (token classifiers) adds "offsets" [batch, seq, 2] (character spans, (0, 0) for special
    and padding tokens) and "word_ids" [batch, seq] (-1 for those)."""
    return _arrays(_encode(tokenizer, texts, max_length, with_offsets), len(texts), with_offsets)


def tokenize_within_limits(tokenizer, texts: Sequence[str], max_length: int, limits: RequestLimits,
                           with_offsets: bool = False) -> dict[str, np.ndarray]:
    """`tokenize_batch` for a served request: texts over max_text_bytes are cut where that leaves the tokens the
    model reads unchanged, and refused otherwise (or always, with long_texts "refuse"); TokenizationError names
    the limit. No text costs more than max_text_bytes of tokenizing."""
    max_length = min(max_length, limits.max_tokens_per_text)  # a config may lower it, never raise it
    try:
        fitted = [fit_text(limits, index, text) for index, text in enumerate(texts)]
        encoded = _encode(tokenizer, [text for text, _ in fitted], max_length, with_offsets)
        for index, ((_, cut), encoding) in enumerate(zip(fitted, encoded.encodings, strict=True)):
            # tokenizers keeps what truncation dropped in `overflowing`: non-empty = the text had more tokens.
            check_text_tokens(limits, index, cut=cut, overflowed=bool(encoding.overflowing),
                              tokens=sum(encoding.attention_mask), max_length=max_length)
    except RequestLimitError as exc:
        raise TokenizationError(str(exc)) from exc
    return _arrays(encoded, len(texts), with_offsets)


def _encode(tokenizer, texts: Sequence[str], max_length: int, with_offsets: bool):  # -> transformers.BatchEncoding
    if not texts:
        raise TokenizationError("no texts to tokenize")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 to hold the special tokens, got {max_length}")
    return tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_attention_mask=True,
        return_token_type_ids=True,
        return_offsets_mapping=with_offsets,
        return_tensors="np",
    )


def _arrays(encoded, count: int, with_offsets: bool) -> dict[str, np.ndarray]:
    ids = np.asarray(encoded["input_ids"], dtype=np.int64)
    arrays = {
        "input_ids": ids,
        "attention_mask": np.asarray(encoded["attention_mask"], dtype=np.int64),
        # Tokenizers of models without segment embeddings may omit them; the engine ignores zeros.
        "token_type_ids": np.asarray(encoded.get("token_type_ids", np.zeros_like(ids)), dtype=np.int64),
    }
    if with_offsets:
        arrays["offsets"] = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(*ids.shape, 2)
        arrays["word_ids"] = np.array([[-1 if w is None else w for w in encoded.word_ids(i)]
                                       for i in range(count)], dtype=np.int64).reshape(ids.shape)
    return arrays
