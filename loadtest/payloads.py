"""Request payloads: the texts sent in text mode and the synthetic token ids sent in tokens mode."""

from __future__ import annotations

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
    """Payload texts of a file (labels, if any, ignored); see `load_labelled_texts`."""
    return load_labelled_texts(path, labels_required=False)[0]


def load_labelled_texts(path: str | Path, *, labels_required: bool = True) -> tuple[list[str], list[str] | None]:
    """Texts, and expected labels when the file gives them (for a correctness check of the answers).

    - CSV (.csv): a header row with a "text" column and optionally a "label" column.
    - JSONL (.jsonl/.json, or a first line starting with "{"): objects with "text" and optionally "label".
    - Anything else: one plain text per line, no labels.
    Blank lines are skipped. Labels must be given for every text or for none.
    """
    from engineforge.data import read_csv_rows, read_jsonl_rows

    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read texts file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    non_blank = [(i, line.strip()) for i, line in enumerate(raw.splitlines(), start=1) if line.strip()]
    if not non_blank:
        raise DataError(f"texts file {path} has no texts; give one text per line, JSONL or CSV with 'text'")
    if path.suffix == ".csv":
        rows = [(n, row) for n, row in read_csv_rows(path) if any((v or "").strip() for v in row.values())]
    elif path.suffix in {".jsonl", ".json"} or non_blank[0][1].startswith("{"):
        rows = list(read_jsonl_rows(path))
    else:
        return [line for _, line in non_blank], None
    texts, labels = [], []
    for lineno, row in rows:
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f'{path}:{lineno}: expected a non-empty string "text" field')
        texts.append(text)
        label = row.get("label")
        labels.append(None if label is None or label == "" else str(label))
    given = [label is not None for label in labels]
    if any(given) and not all(given) and labels_required:
        first = next(lineno for (lineno, _), has in zip(rows, given, strict=True) if not has)
        raise DataError(f"{path}:{first}: no label, but other rows have one; label every row or none")
    return texts, (labels if all(given) else None)  # type: ignore[return-value]


def label_batches(labels: list[str] | tuple[str, ...], batch_size: int) -> list[tuple[str, ...]]:
    """The expected labels of each batch of `text_batches(texts, batch_size)`, in the same order."""
    return [tuple(batch) for batch in cycled_batches(labels, batch_size)]


def cycled_batches(items: list | tuple, batch_size: int) -> list[list]:
    """All distinct batches obtained by cycling through `items`: batch k holds items[(k*batch_size + j) % n], and
    the sequence repeats after n / gcd(n, batch_size) batches."""
    n = len(items)
    return [[items[(k * batch_size + j) % n] for j in range(batch_size)] for k in range(n // np.gcd(n, batch_size))]


def text_batches(texts: list[str] | tuple[str, ...], batch_size: int) -> list[np.ndarray]:
    """All distinct [batch, 1] object arrays obtained by cycling through `texts` (`cycled_batches`), precomputed
    so that payload building stays out of the timed loop."""
    if not texts:
        raise DataError("no payload texts given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = [t.encode("utf-8") for t in texts]
    return [np.array([[t] for t in batch], dtype=np.object_) for batch in cycled_batches(encoded, batch_size)]


def token_batches(batch_size: int, seq_len: int | str, *, n_batches: int | None = None, seed: int = 0,
                  vocab_size: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Deterministic synthetic INT64 (token ids, attention mask) pairs of shape [batch, length], ids in
    [1000, 2000) (within [vocab_size // 2, vocab_size) for a smaller vocabulary, above its special tokens).

    `seq_len` is a length or a distribution spec (loadtest/lengths.py): each item draws its length, the batch is
    as wide as its longest item and shorter items are padded (mask 0), as a tokenizer pads a batch. No tokenizer
    is involved, so tokens mode measures the engine alone; ids in that range are ordinary word pieces in
    BERT-style vocabularies, and the cost of a dense encoder does not depend on which ids are sent.
    """
    from .lengths import parse_lengths

    lengths_of = parse_lengths(seq_len)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    low, high = 1000, 2000
    if vocab_size is not None and vocab_size < high:
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        low, high = vocab_size // 2, vocab_size
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches or (4 if lengths_of.fixed else 64)):
        lengths = lengths_of.sample(rng, batch_size)
        ids = rng.integers(low, high, size=(batch_size, int(lengths.max())), dtype=np.int64)
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        out.append((ids * mask, mask))  # padding id 0, as BERT-style tokenizers pad
    return out
