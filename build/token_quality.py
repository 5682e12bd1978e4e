"""A token classifier's outputs against the fp32 reference's: per-token agreement and entity-level F1.

Rows are texts, [texts, tokens, tags] right-padded; each text's real tokens come from the tokenizer's
offsets (special tokens and padding excluded). Entities are decoded with the `simple` strategy from both
outputs; with gold entities in the data, F1 is scored for each against the gold spans and the drop is in
points, and the engine's entities are also scored against the reference's (how far it moved).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engineforge.ner import decode_entities, entity_f1, spans


@dataclass(frozen=True)
class TokenComparison:
    agreement: float  # fraction of real tokens whose argmax tag matches fp32
    flips: int  # tokens whose tag changed
    accuracy_drop: float | None  # entity F1 drop in points vs gold (None without gold entities)
    margin_shift: float  # mean |top-1 minus runner-up change| / fp32 margin over real tokens, capped at 1
    examples: int = 0
    tokens: int = 0
    reference_f1: float | None = None
    engine_f1: float | None = None
    f1_vs_reference: float = 100.0  # engine entities scored against the fp32 model's entities
    max_abs_logit_diff: float = 0.0
    worst_example: int = 0
    worst_text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def figures(self) -> dict[str, Any]:
        return {"agreement": self.agreement, "flips": self.flips, "entity_f1_drop": self.accuracy_drop,
                "f1_vs_reference": self.f1_vs_reference}

    def summary(self) -> str:
        drop = f", entity F1 drop {self.accuracy_drop} points" if self.accuracy_drop is not None else ""
        return f"token agreement {self.agreement:.2%}{drop}, entity F1 vs fp32 {self.f1_vs_reference:.1f}"

    def badness(self) -> tuple[float, ...]:
        return (self.flips, self.margin_shift)

    def goodness(self) -> tuple[float, ...]:
        return (self.agreement, -(self.accuracy_drop or 0.0), -self.margin_shift)

    @property
    def reference_accuracy(self) -> float | None:  # the budget's message names the two scores it compares
        return self.reference_f1

    @property
    def engine_accuracy(self) -> float | None:
        return self.engine_f1

    @classmethod
    def worst(cls, results: Sequence[TokenComparison]) -> TokenComparison:
        base = min(results, key=lambda r: r.agreement)
        drops = [r.accuracy_drop for r in results if r.accuracy_drop is not None]
        return cls(**(base.to_dict() | {"flips": max(r.flips for r in results),
                                        "accuracy_drop": max(drops) if drops else None,
                                        "margin_shift": max(r.margin_shift for r in results),
                                        "f1_vs_reference": min(r.f1_vs_reference for r in results)}))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def text_offsets(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[np.ndarray]:
    """Character offsets [tokens, 2] per text, as the served tokenizer cuts it ((0, 0) = special token)."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_offsets_mapping=True)
    return [np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in encoded["offset_mapping"]]


def compare_tokens(reference: np.ndarray, engine: np.ndarray, offsets: Sequence[np.ndarray], labels: Sequence[str],
                   gold: Sequence[Sequence[dict[str, Any]] | None], texts: Sequence[str]) -> TokenComparison:
    """Pure comparison of [texts, tokens, tags] outputs; `gold` entities per text (None where unannotated)."""
    flips = total = 0
    shift_sum = 0.0
    worst, worst_flips, max_diff = 0, -1, 0.0
    ref_entities, eng_entities = [], []
    for i, (text, offset) in enumerate(zip(texts, offsets, strict=True)):
        real = np.flatnonzero(offset[:, 1] > offset[:, 0])
        ref, eng = reference[i, : len(offset)].astype(np.float64), engine[i, : len(offset)].astype(np.float64)
        top = ref[real].argmax(-1)
        changed = int((eng[real].argmax(-1) != top).sum())
        flips, total = flips + changed, total + len(real)
        if len(real):
            shift_sum += float(_margin_shift(ref[real], eng[real], top).sum())
            diff = float(np.abs(ref[real] - eng[real]).max())
            max_diff = max(max_diff, diff)
        if changed > worst_flips:
            worst, worst_flips = i, changed
        ref_entities.append(spans(decode_entities(softmax(ref), offset, labels, text)))
        eng_entities.append(spans(decode_entities(softmax(eng), offset, labels, text)))
    ref_f1 = eng_f1 = drop = None
    if gold and all(g is not None for g in gold):
        gold_spans = [spans(g or ()) for g in gold]
        ref_f1, eng_f1 = entity_f1(gold_spans, ref_entities)["f1"], entity_f1(gold_spans, eng_entities)["f1"]
        drop = round(ref_f1 - eng_f1, 3)
    return TokenComparison(
        agreement=round(1 - flips / max(total, 1), 5), flips=flips, accuracy_drop=drop,
        margin_shift=float(f"{shift_sum / max(total, 1):.4g}"), examples=len(texts), tokens=total,
        reference_f1=ref_f1, engine_f1=eng_f1, f1_vs_reference=entity_f1(ref_entities, eng_entities)["f1"],
        max_abs_logit_diff=round(max_diff, 5), worst_example=worst, worst_text=texts[worst] if texts else "")


def _margin_shift(ref: np.ndarray, eng: np.ndarray, top: np.ndarray) -> np.ndarray:
    rows = np.arange(len(top))

    def margin(x: np.ndarray) -> np.ndarray:
        others = x.copy()
        others[rows, top] = -np.inf
        return x[rows, top] - others.max(axis=1)

    ref_margin = margin(ref)
    return np.minimum(np.abs(ref_margin - margin(eng)) / np.maximum(ref_margin, 1e-9), 1.0)
