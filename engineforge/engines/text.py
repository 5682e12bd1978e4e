"""Texts through an engine: tokenized exactly as the served tokenizer model does, then run batch by batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .registry import TOKEN_INPUTS, Engine


def model_input_names(tokenizer: Any) -> list[str]:
    """The inputs an engine takes, in a fixed order (BERT's forward order)."""
    names = [n for n in TOKEN_INPUTS if n in getattr(tokenizer, "model_input_names", TOKEN_INPUTS)]
    return names if "input_ids" in names else list(TOKEN_INPUTS)


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode(tokenizer: Any, texts: Sequence[str], max_length: int, input_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The served tokenizer's arrays (truncated, padded to the longest, int64) for `input_names`."""
    from engineforge.engines.tokenize_runtime import tokenize_batch

    arrays = tokenize_batch(tokenizer, texts, max_length)
    return {name: arrays[name] for name in input_names}


def engine_logits(engine: Engine, tokenizer: Any, texts: Sequence[str], max_length: int,
                  batch_size: int = 32) -> np.ndarray:
    """Logits of `engine` for `texts`, rows in text order ([texts, tokens, tags] for a token classifier)."""
    names = engine.input_names
    parts = [np.asarray(engine.run(encode(tokenizer, chunk, max_length, names)), dtype=np.float32)
             for chunk in batches(texts, batch_size)]
    if parts and parts[0].ndim == 3:  # per-token outputs: right-pad every batch to the longest sequence
        longest = max(p.shape[1] for p in parts)
        parts = [np.pad(p, ((0, 0), (0, longest - p.shape[1]), (0, 0))) for p in parts]
    return np.concatenate(parts)
