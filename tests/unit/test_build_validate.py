"""Accuracy comparison and budget logic on hand-made logits (one definition for validate, select_runtime and
static int8's fallback)."""

from __future__ import annotations

import numpy as np
import pytest

from engineforge.build.accuracy import Budget, compare_logits
from engineforge.build.steps import ValidateConfig
from engineforge.errors import AccuracyBudgetExceeded

TEXTS = [f"text {i}" for i in range(4)]


def test_compare_logits_counts_accuracy_agreement_and_worst():
    reference = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    engine = np.array([[1.9, 0.0], [0.0, 2.1], [0.0, 1.0], [0.0, 2.0]])  # example 2 flips
    result = compare_logits(reference, engine, [0, 1, 0, 0], TEXTS)
    assert result.reference_accuracy == 75.0
    assert result.engine_accuracy == 50.0
    assert result.accuracy_drop == 25.0
    assert result.agreement == 0.75
    assert result.worst_example == 2
    assert result.max_abs_logit_diff == pytest.approx(2.0)


def test_unlabelled_data_gives_agreement_only():
    logits = np.eye(4)
    result = compare_logits(logits, logits, None, TEXTS)
    assert result.reference_accuracy is None and result.accuracy_drop is None
    assert result.agreement == 1.0


def test_budget_failure_names_the_worst_difference():
    reference = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    engine = reference.copy()
    engine[3] = [3.0, 0.0]
    result = compare_logits(reference, engine, [0, 1, 0, 1], TEXTS)
    with pytest.raises(AccuracyBudgetExceeded) as info:
        ValidateConfig(max_accuracy_drop=1.0, min_agreement=0.98).budget.check(result)
    message = str(info.value)
    assert "accuracy dropped 25.00 points" in message
    assert "agreement with fp32 is 75.00%" in message
    assert "example 3 ('text 3')" in message


def test_budget_within_limits_passes():
    logits = np.array([[1.0, 0.0], [0.0, 1.0]])
    Budget().check(compare_logits(logits, logits + 0.01, [0, 1], TEXTS[:2]))
    assert Budget() == ValidateConfig().budget

