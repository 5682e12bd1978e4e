"""Request payloads: the texts sent in text mode and the synthetic token ids sent in tokens mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engineforge.errors import DataError

# Realistic customer-support messages of varied length, so tokenization cost is not a best case.
DEFAULT_TEXTS: tuple[str, ...] = (
    "I was charged twice for my subscription this month, can you refund the duplicate payment?",
    "My package says delivered but it is not at my door or with my neighbours.",
    "How do I change the email address on my account?",
    "The app crashes every time I try to upload a photo from my gallery on Android 14.",
    "Thanks a lot, the replacement arrived yesterday and works perfectly!",
    "I want to cancel my order #48213 before it ships, it was placed by mistake.",
    "Your support agent was very rude on the phone and hung up on me before I could explain.",
    "Is there a student discount for the annual plan, and can I switch from monthly without "
    "losing the remaining days I already paid for?",
    "password reset link expired",
    "The invoice for March shows the wrong company name and VAT number; please send a corrected one.",
)


def load_texts(path: str | Path) -> list[str]:
    """Read payload texts: JSONL with a "text" field per line, or one plain text per line.

    The format is JSONL when the file ends in .jsonl/.json or its first non-blank line starts
    with "{". Blank lines are skipped.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read texts file {path}: {exc.strerror or exc}") from exc
    non_blank = [(i, line.strip()) for i, line in enumerate(lines, start=1) if line.strip()]
    if not non_blank:
        raise DataError(f"texts file {path} has no texts; give one text per line or JSONL with 'text'")
    is_jsonl = path.suffix in {".jsonl", ".json"} or non_blank[0][1].startswith("{")
    if not is_jsonl:
        return [line for _, line in non_blank]

    texts = []
    for lineno, line in non_blank:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text:
            raise DataError(f'{path}:{lineno}: expected an object with a non-empty string "text" field')
        texts.append(text)
    return texts


def text_batches(texts: list[str] | tuple[str, ...], batch_size: int) -> list[np.ndarray]:
    """All distinct [batch, 1] object arrays obtained by cycling through `texts`.

    Batch k holds texts[(k*batch_size + j) % n]; the sequence repeats after n / gcd(n, batch_size)
    batches, so precomputing them keeps payload building out of the timed loop.
    """
    if not texts:
        raise DataError("no payload texts given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(texts)
    period = n // np.gcd(n, batch_size)
    encoded = [t.encode("utf-8") for t in texts]
    return [
        np.array([[encoded[(k * batch_size + j) % n]] for j in range(batch_size)], dtype=np.object_)
        for k in range(period)
    ]


def token_batches(batch_size: int, seq_len: int, *, n_batches: int = 4, seed: int = 0,
                  vocab_size: int | None = None) -> list[np.ndarray]:
    """Deterministic synthetic INT64 token ids of shape [batch, seq_len], values in [1000, 2000) (within
    [vocab_size // 2, vocab_size) for a smaller vocabulary, above its special tokens).

    No tokenizer is involved, so tokens mode measures the engine (model) alone; ids in that range
    are ordinary word pieces in BERT-style vocabularies, and the cost of a dense encoder does not
    depend on which ids are sent. The attention mask is all ones (no padding).
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    low, high = 1000, 2000
    if vocab_size is not None and vocab_size < high:
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        low, high = vocab_size // 2, vocab_size
    rng = np.random.default_rng(seed)
    return [rng.integers(low, high, size=(batch_size, seq_len), dtype=np.int64) for _ in range(n_batches)]
