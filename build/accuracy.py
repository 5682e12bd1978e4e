"""An engine's logits against the fp32 reference's, and the accuracy budget: one definition of both.

The validate step, runtime selection and static int8's fp32 fallback all judge candidates here, so the
budget a build enforces at the end is the budget every earlier decision was made against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from engineforge.errors import AccuracyBudgetExceeded

from .embedding_quality import EmbeddingComparison


@dataclass(frozen=True)
class Comparison:
    """Engine vs fp32 on one eval set. Accuracies in percent, drop in points (positive = engine worse)."""

    agreement: float  # fraction of examples whose argmax matches fp32
    flips: int  # examples whose argmax changed
    accuracy_drop: float | None  # None when the data carries no labels
    margin_shift: float  # mean |margin change| / fp32 margin (top-1 minus runner-up), each capped at 1
    examples: int = 0
    reference_accuracy: float | None = None
    engine_accuracy: float | None = None
    max_abs_logit_diff: float = 0.0
    mean_abs_logit_diff: float = 0.0
    worst_example: int = 0  # the example with the largest logit difference
    worst_text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def figures(self) -> dict[str, Any]:
        """The figures a search compares candidates by."""
        return {"agreement": self.agreement, "flips": self.flips, "accuracy_drop": self.accuracy_drop,
                "margin_shift": self.margin_shift}

    def summary(self) -> str:
        return (f"agreement {self.agreement:.2%}, accuracy drop {self.accuracy_drop}, "
                f"margin shift {self.margin_shift:.3g}")

    def badness(self) -> tuple[float, ...]:
        """Larger = moved further from fp32 (sensitivity ranking)."""
        return (self.flips, self.margin_shift)

    def goodness(self) -> tuple[float, ...]:
        drop = self.accuracy_drop if self.accuracy_drop is not None else 0.0
        return (self.agreement, -drop, -self.margin_shift)

    @classmethod
    def worst(cls, results: Sequence[Comparison]) -> Comparison:
        """The worst of each figure, e.g. over the runtimes that may serve the engine."""
        base = min(results, key=lambda r: r.agreement)
        drops = [r.accuracy_drop for r in results if r.accuracy_drop is not None]
        return replace(base, flips=max(r.flips for r in results), accuracy_drop=max(drops) if drops else None,
                       margin_shift=max(r.margin_shift for r in results))


def compare_logits(reference: np.ndarray, engine: np.ndarray, label_ids: Sequence[int] | None,
                   texts: Sequence[str] | None = None) -> Comparison:
    """Pure comparison of two logit matrices (rows = examples)."""
    ref_pred, eng_pred = reference.argmax(axis=1), engine.argmax(axis=1)
    diff = np.abs(reference.astype(np.float64) - engine.astype(np.float64))
    worst = int(diff.max(axis=1).argmax())
    ref_acc = eng_acc = drop = None
    if label_ids is not None:
        labels = np.asarray(label_ids)
        ref_acc = round(float((ref_pred == labels).mean() * 100), 3)
        eng_acc = round(float((eng_pred == labels).mean() * 100), 3)
        drop = round(ref_acc - eng_acc, 3)
    flips = int((ref_pred != eng_pred).sum())
    ref_margin, eng_margin = _margin(reference, ref_pred), _margin(engine, ref_pred)
    shift = np.minimum(np.abs(ref_margin - eng_margin) / np.maximum(ref_margin, 1e-9), 1.0).mean()
    return Comparison(
        agreement=round(1 - flips / len(reference), 5), flips=flips, accuracy_drop=drop,
        margin_shift=float(f"{shift:.4g}"), examples=len(reference), reference_accuracy=ref_acc,
        engine_accuracy=eng_acc, max_abs_logit_diff=round(float(diff.max()), 5),
        mean_abs_logit_diff=round(float(diff.mean()), 6), worst_example=worst,
        worst_text=texts[worst] if texts is not None else "",
    )


def _margin(logits: np.ndarray, top: np.ndarray) -> np.ndarray:
    """logit[top] minus the best other logit, per row (negative where `top` is no longer the argmax)."""
    logits = logits.astype(np.float64)
    rows = np.arange(len(logits))
    others = logits.copy()
    others[rows, top] = -np.inf
    return logits[rows, top] - others.max(axis=1)


def _cosine(value: float) -> str:
    """Enough digits that a cosine just below 1 does not print as 1."""
    return f"{value:.5f}" if value < 0.99999 else f"{value:.8f}"


@dataclass(frozen=True)
class Budget:
    """How far an engine may move from fp32. Classifiers: accuracy drop in points, argmax agreement as a
    fraction. Embeddings: cosine to the fp32 embedding (mean and worst text), recall@10 drop in points."""

    max_accuracy_drop: float = 1.0
    min_agreement: float = 0.98
    min_cosine_mean: float = 0.99
    min_cosine_worst: float = 0.95
    max_recall_drop: float = 2.0

    def violations(self, result: Any) -> list[str]:
        if isinstance(result, EmbeddingComparison):
            return self._embedding_violations(result)
        if hasattr(result, "f1_vs_reference"):  # token classification: entity F1 and per-token agreement
            return self._token_violations(result)
        problems = []
        if result.accuracy_drop is not None and result.accuracy_drop > self.max_accuracy_drop:
            accuracies = (f" ({result.reference_accuracy:.2f}% fp32 -> {result.engine_accuracy:.2f}% engine)"
                          if result.reference_accuracy is not None and result.engine_accuracy is not None else "")
            problems.append(f"accuracy dropped {result.accuracy_drop:.2f} points{accuracies}, "
                            f"budget {self.max_accuracy_drop:.2f}")
        if result.agreement < self.min_agreement:
            problems.append(f"argmax agreement with fp32 is {result.agreement:.2%}, budget >= {self.min_agreement:.2%}")
        return problems

    def _token_violations(self, result: Any) -> list[str]:
        problems = []
        if result.accuracy_drop is not None and result.accuracy_drop > self.max_accuracy_drop:
            problems.append(f"entity F1 dropped {result.accuracy_drop:.2f} points ({result.reference_f1:.2f} fp32 -> "
                            f"{result.engine_f1:.2f} engine), budget {self.max_accuracy_drop:.2f}")
        if result.agreement < self.min_agreement:
            problems.append(f"per-token tag agreement with fp32 is {result.agreement:.2%}, budget >= "
                            f"{self.min_agreement:.2%}")
        return problems

    def _embedding_violations(self, result: EmbeddingComparison) -> list[str]:
        problems = []
        if result.cosine_mean < self.min_cosine_mean:
            problems.append(f"mean cosine to the fp32 embeddings is {_cosine(result.cosine_mean)}, budget >= "
                            f"{self.min_cosine_mean}")
        if result.cosine_worst < self.min_cosine_worst:
            problems.append(f"worst cosine is {_cosine(result.cosine_worst)}, budget >= {self.min_cosine_worst}")
        if result.recall_drop is not None and result.recall_drop > self.max_recall_drop:
            problems.append(f"recall@10 dropped {result.recall_drop:.2f} points ({result.reference_recall:.2f}% fp32 "
                            f"-> {result.engine_recall:.2f}% engine), budget {self.max_recall_drop:.2f}")
        return problems

    def holds(self, result: Any) -> bool:
        return not self.violations(result)

    def check(self, result: Any) -> None:
        """Raise AccuracyBudgetExceeded naming every violation and the worst output difference."""
        problems = self.violations(result)
        if problems:
            raise AccuracyBudgetExceeded(
                "engine is outside the accuracy budget: " + "; ".join(problems)
                + f". Worst output difference: {result.max_abs_logit_diff:.4g} (max |output|) on eval example "
                f"{result.worst_example} ({result.worst_text[:80]!r}). Loosen the budget (--max-accuracy-drop, "
                "--min-agreement; validate.min_cosine_mean, min_cosine_worst, max_recall_drop for embeddings) or "
                "choose a less aggressive preset (e.g. fp32).", figures=[result.figures()]
            )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_BUDGET = Budget()  # the one set of budget defaults: validate's options and the build-engine help read it
