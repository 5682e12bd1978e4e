"""Text data a build reads (eval, train, calibration, unlabelled): JSONL or CSV with `text` and optional `label`
(classifiers) or `positive` (embeddings: the text this one should retrieve)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge.errors import DataError


@dataclass(frozen=True)
class Example:
    text: str
    label: str | None = None
    positive: str | None = None  # embeddings: a text that should be retrieved for this one (recall@10)
    # NER: gold entities, {"label": type, "start": char, "end": char (exclusive)}; None = not annotated.
    entities: tuple[dict[str, Any], ...] | None = None


def load_examples(path: Path, labels: Sequence[str] | None = None, limit: int | None = None,
                  entity_types: Sequence[str] | None = None) -> list[Example]:
    """Read `{"text", "label"}` rows (or `{"text", "positive"}`, `{"text", "entities"}`). Labels, when given,
    must be among the model's labels; entity types among `entity_types` (a token classifier's)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.suffix == ".csv":
        rows = read_csv_rows(path)
    elif path.suffix in (".jsonl", ".json"):
        rows = read_jsonl_rows(path)
    else:
        raise DataError(f"data file {path}: use .jsonl (one JSON object per line) or .csv with a 'text' column")
    examples: list[Example] = []
    for line_no, row in rows:
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{line_no}: missing or empty 'text'")
        label, positive = row.get("label"), row.get("positive")
        if positive is not None and (not isinstance(positive, str) or not positive.strip()):
            raise DataError(f"{path}:{line_no}: 'positive' must be a non-empty text")
        entities = _entities(path, line_no, text, row["entities"]) if "entities" in row else None
        examples.append(Example(text=text, label=None if label is None else str(label), positive=positive or None,
                                entities=entities))
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError(f"data file {path} holds no examples")
    if entity_types is not None:
        unknown = sorted({e["label"] for x in examples for e in x.entities or ()} - set(entity_types))
        if unknown:
            raise DataError(f"{path} uses entity types {unknown} that the model does not tag; its types: "
                            f"{sorted(entity_types)}")
        return examples
    if labels is not None and not labels:  # an embedding model has no labels: any given are not used
        examples = [Example(text=e.text, positive=e.positive) for e in examples]
    elif labels is not None:
        unknown = sorted({e.label for e in examples if e.label is not None} - set(labels))
        if unknown:
            raise DataError(
                f"{path} uses labels {unknown} that the model does not know; model labels: {list(labels)}"
            )
    return examples


def _entities(path: Path, line_no: int, text: str, value: object) -> tuple[dict[str, Any], ...]:
    where = f"{path}:{line_no}: 'entities'"
    if not isinstance(value, list):
        raise DataError(f"{where} must be a list of {{\"label\", \"start\", \"end\"}} objects")
    out = []
    for entity in value:
        if not isinstance(entity, dict) or not isinstance(entity.get("label"), str):
            raise DataError(f"{where}: each entity needs a string 'label' and integer 'start'/'end', got {entity!r}")
        start, end = entity.get("start"), entity.get("end")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            raise DataError(f"{where}: span {start}..{end} of {entity['label']!r} is not inside the text "
                            f"(0..{len(text)}, end exclusive)")
        out.append({"label": entity["label"], "start": start, "end": end})
    return tuple(sorted(out, key=lambda e: e["start"]))


def read_jsonl_rows(path: Path, example: str = '{"text": ...}') -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line; DataError naming the line and showing `example` (what one line
    should look like) for text that is not UTF-8, bad JSON or a non-object."""
    with path.open(encoding="utf-8") as handle:
        try:
            lines = list(handle)
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8 JSONL") from exc
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg}); each line must be one object like "
                            f"{example}") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line_no}: a {type(row).__name__}, not an object; each line must be one "
                            f"object like {example}")
        yield line_no, row


def read_csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) per data row of a CSV whose header has a 'text' column."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            raise DataError(f"{path}: the CSV header must contain a 'text' column")
        for line_no, row in enumerate(reader, start=2):
            yield line_no, dict(row)


def label_index(examples: Sequence[Example], labels: Sequence[str], missing: int = -100) -> list[int]:
    """Class id per example; `missing` (-100 is ignored by cross-entropy) where an example has no label."""
    index = {label: i for i, label in enumerate(labels)}
    return [index[e.label] if e.label is not None and e.label in index else missing for e in examples]


def eval_label_ids(examples: Sequence[Example], labels: Sequence[str]) -> list[int] | None:
    """Class ids when every example is labelled (accuracy is defined), else None (agreement only)."""
    if not examples or any(e.label is None for e in examples):
        return None
    return label_index(examples, labels)
