"""What a valid answer looks like, per output: each check turns the decoded outputs (name -> array) into a short
summary, or raises ValueError when they are not a valid answer for `batch_size` items (an empty or short output is
how a numpy/ABI mismatch in the python backend shows up)."""

from __future__ import annotations

import json

import numpy as np


def count_correct(labels: np.ndarray, expected: tuple[str, ...]) -> int:
    """How many of the batch's predicted labels (BYTES) equal the expected ones."""
    predicted = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in labels.reshape(-1)]
    return sum(p == e for p, e in zip(predicted, expected, strict=False))


def check_text_outputs(arrays: dict[str, np.ndarray], batch_size: int) -> str:
    labels, probs = arrays["LABEL"], arrays["PROBABILITIES"]
    _expect_rows("LABEL", labels, batch_size)
    _expect_rows("PROBABILITIES", probs, batch_size)
    first = labels.reshape(-1)[0]
    return first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)


def check_logits_outputs(arrays: dict[str, np.ndarray], batch_size: int) -> str:
    logits = arrays["LOGITS"]
    _expect_rows("LOGITS", logits, batch_size)
    return str(int(np.argmax(logits.reshape(batch_size, -1)[0])))


def check_entity_outputs(arrays: dict[str, np.ndarray], batch_size: int) -> str:
    rows = arrays["ENTITIES"]
    _expect_rows("ENTITIES", rows, batch_size)
    first = json.loads(rows.reshape(-1)[0])
    if not isinstance(first, dict) or "simple" not in first:
        raise ValueError("ENTITIES is not a JSON object of entity lists per strategy")
    return f"{len(first['simple'])} entities"


def check_tag_outputs(arrays: dict[str, np.ndarray], batch_size: int) -> str:
    rows = arrays["TOKEN_LABELS"]
    _expect_rows("TOKEN_LABELS", rows, batch_size)
    return f"{len(json.loads(rows.reshape(-1)[0]))} tags"


def check_embedding_outputs(arrays: dict[str, np.ndarray], batch_size: int) -> str:
    embeddings = arrays["EMBEDDING"]
    _expect_rows("EMBEDDING", embeddings, batch_size)
    if not np.isfinite(embeddings).all():
        raise ValueError("EMBEDDING holds non-finite values")
    return f"dim {embeddings.shape[-1]}"


def _expect_rows(name: str, arr: np.ndarray, batch_size: int) -> None:
    # An empty or short output is how a numpy/ABI mismatch in the python backend shows up.
    if arr.ndim == 0 or arr.shape[0] != batch_size or arr.size == 0:
        raise ValueError(f"{name} has shape {list(arr.shape)}, expected {batch_size} row(s)")
