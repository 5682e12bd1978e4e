"""Validate step: the engine against the fp32 PyTorch original on labelled eval data, within a budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engineforge.errors import AccuracyBudgetExceeded, DataError

from .config import ValidateConfig
from .inference import engine_logits
from .pipeline import BuildContext, register_step


@dataclass(frozen=True)
class ValidationResult:
    examples: int
    reference_accuracy: float | None  # percent; None when the data carries no labels
    engine_accuracy: float | None
    accuracy_drop: float | None  # percentage points, positive = engine worse
    agreement: float  # fraction of examples where argmax matches fp32
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    worst_example: int
    worst_text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_logits(reference: np.ndarray, engine: np.ndarray, label_ids: list[int] | None,
                   texts: list[str]) -> ValidationResult:
    """Pure comparison of two logit matrices (rows = examples)."""
    ref_pred, eng_pred = reference.argmax(axis=1), engine.argmax(axis=1)
    diff = np.abs(reference - engine)
    worst = int(diff.max(axis=1).argmax())
    ref_acc = eng_acc = drop = None
    if label_ids is not None:
        labels = np.asarray(label_ids)
        ref_acc = round(float((ref_pred == labels).mean() * 100), 3)
        eng_acc = round(float((eng_pred == labels).mean() * 100), 3)
        drop = round(ref_acc - eng_acc, 3)
    return ValidationResult(
        examples=len(reference), reference_accuracy=ref_acc, engine_accuracy=eng_acc, accuracy_drop=drop,
        agreement=round(float((ref_pred == eng_pred).mean()), 5),
        max_abs_logit_diff=round(float(diff.max()), 5), mean_abs_logit_diff=round(float(diff.mean()), 6),
        worst_example=worst, worst_text=texts[worst],
    )


def check_budget(result: ValidationResult, config: ValidateConfig) -> None:
    problems = []
    if result.accuracy_drop is not None and result.accuracy_drop > config.max_accuracy_drop:
        problems.append(f"accuracy dropped {result.accuracy_drop:.2f} points ({result.reference_accuracy:.2f}% fp32 "
                        f"-> {result.engine_accuracy:.2f}% engine), budget {config.max_accuracy_drop:.2f}")
    if result.agreement < config.min_agreement:
        problems.append(f"argmax agreement with fp32 is {result.agreement:.2%}, budget >= {config.min_agreement:.2%}")
    if problems:
        raise AccuracyBudgetExceeded(
            "engine is outside the accuracy budget: " + "; ".join(problems)
            + f". Worst output difference: {result.max_abs_logit_diff:.4g} (max |logit|) on eval example "
            f"{result.worst_example} ({result.worst_text[:80]!r}). Loosen the budget (--max-accuracy-drop, "
            "--min-agreement) or choose a less aggressive preset (e.g. fp32)."
        )


@register_step(ValidateConfig)
def validate_accuracy(ctx: BuildContext, config: ValidateConfig) -> dict[str, Any]:
    examples = ctx.eval_examples[: config.max_examples] if config.max_examples else ctx.eval_examples
    if not examples:
        raise DataError("the validate step needs labelled eval data: pass --eval-data FILE.jsonl "
                        "(lines of {\"text\": ..., \"label\": ...})")
    texts = [e.text for e in examples]
    labelled = all(e.label is not None for e in examples)
    label_ids = [ctx.labels.index(e.label) for e in examples] if labelled else None
    reference = ctx.reference_logits(texts, config.batch_size)
    engine = engine_logits(ctx, texts, config.batch_size)
    result = compare_logits(reference, engine, label_ids, texts)
    ctx.validation = result.to_dict() | {"budget": {"max_accuracy_drop": config.max_accuracy_drop,
                                                    "min_agreement": config.min_agreement}}
    check_budget(result, config)
    return {"runtime": ctx.runtime} | {k: v for k, v in result.to_dict().items() if k != "worst_text"}
