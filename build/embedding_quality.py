"""An engine's sentence embeddings against the fp32 reference's: cosine per text and retrieval recall@10.

Rows are the eval texts, then the `positive` of every example that has one (the order `eval_texts` gives).
recall@10 ranks, for each query, every positive by cosine; a query is a hit when its own positive is in
the top 10. It is computed for the reference and the engine embeddings alike, and the drop is in points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

RECALL_K = 10


@dataclass(frozen=True)
class EmbeddingComparison:
    cosine_mean: float
    cosine_worst: float
    examples: int
    recall_pairs: int = 0
    reference_recall: float | None = None  # percent
    engine_recall: float | None = None
    recall_drop: float | None = None  # points, positive = engine worse
    max_abs_diff: float = 0.0
    worst_example: int = 0  # the row with the lowest cosine
    worst_text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def figures(self) -> dict[str, Any]:
        return {"cosine_mean": self.cosine_mean, "cosine_worst": self.cosine_worst, "recall_drop": self.recall_drop}

    def summary(self) -> str:
        recall = f", recall@{RECALL_K} drop {self.recall_drop} points" if self.recall_drop is not None else ""
        return f"cosine mean {self.cosine_mean:.5f}, worst {self.cosine_worst:.5f}{recall}"

    def badness(self) -> tuple[float, ...]:
        """Larger = moved further from fp32 (sensitivity ranking)."""
        return (1 - self.cosine_worst, 1 - self.cosine_mean)

    def goodness(self) -> tuple[float, ...]:
        return (self.cosine_worst, self.cosine_mean, -(self.recall_drop or 0.0))

    @property
    def max_abs_logit_diff(self) -> float:  # the budget's message names the worst output difference
        return self.max_abs_diff

    @classmethod
    def worst(cls, results: Sequence[EmbeddingComparison]) -> EmbeddingComparison:
        base = min(results, key=lambda r: r.cosine_worst)
        drops = [r.recall_drop for r in results if r.recall_drop is not None]
        return cls(**(base.to_dict() | {"cosine_mean": min(r.cosine_mean for r in results),
                                        "recall_drop": max(drops) if drops else None}))


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def recall_at_k(queries: np.ndarray, positives: np.ndarray, k: int = RECALL_K) -> float:
    """Percent of queries whose own positive (same row index) is among the k positives most similar to them."""
    scores = _unit(queries) @ _unit(positives).T
    own = np.diag(scores)
    rank = (scores > own[:, None]).sum(axis=1)  # positives scoring strictly higher than the right one
    return round(float((rank < k).mean() * 100), 3)


def compare_embeddings(reference: np.ndarray, engine: np.ndarray, n_queries: int,
                       texts: Sequence[str] | None = None) -> EmbeddingComparison:
    """Pure comparison; rows after the first `n_queries` are the positives of the first rows, in order."""
    cosine = (_unit(reference) * _unit(engine)).sum(axis=1)
    worst = int(cosine.argmin())
    pairs = len(reference) - n_queries
    ref_recall = eng_recall = drop = None
    if pairs > 0:
        ref_recall = recall_at_k(reference[:pairs], reference[n_queries:])
        eng_recall = recall_at_k(engine[:pairs], engine[n_queries:])
        drop = round(ref_recall - eng_recall, 3)
    diff = np.abs(reference.astype(np.float64) - engine.astype(np.float64))
    return EmbeddingComparison(
        cosine_mean=round(float(cosine.mean()), 8), cosine_worst=round(float(cosine.min()), 8),
        examples=len(reference), recall_pairs=max(pairs, 0), reference_recall=ref_recall, engine_recall=eng_recall,
        recall_drop=drop, max_abs_diff=round(float(diff.max()), 6), worst_example=worst,
        worst_text=texts[worst] if texts is not None else "")
