"""Token classification (NER) decoding and scoring: pure functions shared by the build and the served model.

Labels are IOB2 tags (`O`, `B-PRODUCT`, `I-PRODUCT`, ...). Per-token predictions become entities with the
aggregation strategies of Hugging Face's token-classification pipeline:

- `simple`: consecutive tokens of one entity type (a `B-` starts a new entity) form an entity; its score is
  the mean of their probabilities.
- `first`: first aggregates sub-words to words (a word takes its first sub-word's label), then groups words.
- `max`: like `first`, but a word takes the label of its highest-scoring sub-word.

Entity-level precision/recall/F1 follow seqeval's default (exact span and type).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

STRATEGIES = ("simple", "first", "max")
OUTSIDE = "O"


@dataclass(frozen=True)
class Entity:
    label: str  # entity type, without the B-/I- prefix
    start: int  # character offsets into the text, end exclusive
    end: int
    score: float
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_tag(tag: str) -> tuple[str, str]:
    """("B", "PRODUCT") for "B-PRODUCT", ("O", "") for "O"; a bare "PRODUCT" counts as inside."""
    if tag == OUTSIDE or not tag:
        return OUTSIDE, ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BIES":
        prefix = {"S": "B", "E": "I"}.get(tag[0], tag[0])
        return prefix, tag[2:]
    return "I", tag


def entity_types(labels: Sequence[str]) -> list[str]:
    """A token classifier's entity types: its IOB2 tags without B-/I- (O left out)."""
    return sorted({split_tag(tag)[1] for tag in labels} - {""})


def _units(probabilities: np.ndarray, offsets: np.ndarray, word_ids: Sequence[int] | None,
           strategy: str) -> list[tuple[int, int, int, float]]:
    """(label id, start, end, score) per unit: a token (simple) or a word (first, max); special tokens
    (offsets (0, 0)) are skipped."""
    real = [i for i in range(len(offsets)) if offsets[i][1] > offsets[i][0]]
    if strategy == "simple" or word_ids is None:
        return [(int(probabilities[i].argmax()), int(offsets[i][0]), int(offsets[i][1]),
                 float(probabilities[i].max())) for i in real]
    words: dict[int, list[int]] = {}
    for i in real:
        words.setdefault(int(word_ids[i]) if word_ids[i] is not None and word_ids[i] >= 0 else -1 - i, []).append(i)
    units = []
    for tokens in words.values():
        if strategy == "first":
            chosen = tokens[0]
        else:
            chosen = max(tokens, key=lambda i: float(probabilities[i].max()))
        label = int(probabilities[chosen].argmax())
        units.append((label, int(offsets[tokens[0]][0]), int(offsets[tokens[-1]][1]),
                      float(probabilities[chosen][label])))
    return sorted(units, key=lambda u: u[1])


def decode_entities(probabilities: np.ndarray, offsets: np.ndarray, labels: Sequence[str], text: str = "",
                    word_ids: Sequence[int] | None = None, strategy: str = "simple") -> list[Entity]:
    """Entities of one text from per-token probabilities [tokens, labels] and character offsets [tokens, 2]."""
    if strategy not in STRATEGIES:
        raise ValueError(f"aggregation strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    entities: list[Entity] = []
    current: list[tuple[str, int, int, float]] = []

    def close() -> None:
        if current:
            start, end = current[0][1], current[-1][2]
            entities.append(Entity(current[0][0], start, end, round(float(np.mean([c[3] for c in current])), 5),
                                   text[start:end] if text else ""))
            current.clear()

    for label_id, start, end, score in _units(probabilities, offsets, word_ids, strategy):
        prefix, kind = split_tag(labels[label_id])
        if prefix == OUTSIDE:
            close()
            continue
        if prefix == "B" or not current or current[-1][0] != kind:
            close()
        current.append((kind, start, end, score))
    close()
    return entities


def spans(entities: Sequence[Entity | dict[str, Any]]) -> set[tuple[str, int, int]]:
    out = set()
    for e in entities:
        if isinstance(e, Entity):
            out.add((e.label, e.start, e.end))
        else:
            out.add((str(e["label"]), int(e["start"]), int(e["end"])))
    return out


def entity_f1(gold: Sequence[set[tuple[str, int, int]]], predicted: Sequence[set[tuple[str, int, int]]]
              ) -> dict[str, float]:
    """Micro precision / recall / F1 in percent over texts (exact type and character span)."""
    tp = sum(len(g & p) for g, p in zip(gold, predicted, strict=True))
    n_pred, n_gold = sum(map(len, predicted)), sum(map(len, gold))
    precision = tp / n_pred if n_pred else (1.0 if not n_gold else 0.0)
    recall = tp / n_gold if n_gold else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision * 100, 3), "recall": round(recall * 100, 3), "f1": round(f1 * 100, 3)}


def token_tags(offsets: np.ndarray, entities: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[int]:
    """IOB2 label id per token for gold character-span entities (-100 for special tokens): training targets."""
    index = {label: i for i, label in enumerate(labels)}
    tags = []
    for start, end in offsets:
        if end <= start:
            tags.append(-100)
            continue
        tag = OUTSIDE
        for entity in entities:
            if start >= entity["start"] and end <= entity["end"]:
                tag = ("B-" if start == entity["start"] else "I-") + entity["label"]
                break
        tags.append(index.get(tag, index.get(OUTSIDE, 0)))
    return tags
