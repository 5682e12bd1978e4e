"""Pure logic of structured pruning and distillation: budgets, floors, configs, the KD loss, splits."""

from __future__ import annotations

import numpy as np
import pytest

from engineforge.build.step_registry import step_config_from_dict
from engineforge.build.steps import PruneConfig
from engineforge.build.steps.distill import DistillConfig, split_holdout
from engineforge.build.steps.prune.prune_importance import normalize_per_layer
from engineforge.build.steps.prune.prune_structure import allocate, allocate_uniform, keep_count
from engineforge.errors import ConfigError


def test_global_ranking_takes_the_best_units_anywhere():
    scores = [np.array([0.9, 0.1, 0.8, 0.2]), np.array([0.7, 0.6, 0.05, 0.3])]
    assert allocate(scores, keep_total=4, min_per_layer=1) == [[0, 2], [0, 1]]


def test_floor_keeps_every_layer_alive_even_when_its_scores_are_all_lowest():
    scores = [np.array([5.0, 4.0, 3.0, 2.0]), np.zeros(4), np.array([0.0, 1e-9, 0.0, 0.0])]
    kept = allocate(scores, keep_total=5, min_per_layer=1)
    assert [len(k) for k in kept] == [3, 1, 1]
    assert kept[2] == [1]  # the floor takes the layer's own best unit
    assert sum(map(len, allocate(scores, keep_total=6, min_per_layer=2))) == 6
    assert all(len(k) >= 2 for k in allocate(scores, keep_total=6, min_per_layer=2))


def test_floor_larger_than_a_layer_keeps_the_whole_layer():
    assert allocate([np.ones(2), np.ones(6)], keep_total=5, min_per_layer=3) == [[0, 1], [0, 1, 2]]


def test_impossible_budget_names_the_fix():
    with pytest.raises(ConfigError, match="lower the sparsity or the per-layer minimum"):
        allocate([np.ones(4), np.ones(4)], keep_total=1, min_per_layer=1)


def test_ties_break_deterministically_by_layer_then_index():
    scores = [np.ones(4), np.ones(4)]
    assert allocate(scores, keep_total=4, min_per_layer=1) == [[0, 1, 2], [0]]
    assert allocate_uniform(scores, 2) == [[0, 1], [0, 1]]


def test_uniform_allocation_keeps_the_same_count_per_layer_by_importance():
    scores = [np.array([0.1, 0.9, 0.5, 0.3]), np.array([0.8, 0.2, 0.1, 0.7])]
    assert allocate_uniform(scores, 2) == [[1, 2], [0, 3]]
    with pytest.raises(ConfigError):
        allocate_uniform(scores, 0)


@pytest.mark.parametrize(("total", "sparsity", "floor", "expected"),
                         [(12, 0.5, 1, 6), (4, 0.5, 1, 2), (12, 0.9, 1, 1), (1536, 0.5, 1, 768), (8, 0.9, 4, 4),
                          (12, 0.0, 1, 12)])
def test_keep_count_rounds_and_respects_floor(total, sparsity, floor, expected):
    assert keep_count(total, sparsity, floor) == expected


def test_layer_normalisation_makes_layers_comparable():
    normed = normalize_per_layer([np.array([3.0, 4.0]), np.array([300.0, 400.0]), np.zeros(4)])
    np.testing.assert_allclose(normed[0], normed[1])
    assert np.all(np.isfinite(normed[2])) and np.allclose(normed[2], normed[2][0])


@pytest.mark.parametrize(("values", "message"), [
    ({"head_sparsity": 0.95}, r"head_sparsity=0.95.*\[0, 0.9\]"),
    ({"ffn_sparsity": -0.1}, "ffn_sparsity"),
    ({"min_heads_per_layer": 0}, "never left empty"),
    ({"min_ffn_per_layer": 0}, "never left empty"),
    ({"target_latency_ms": 0}, "milliseconds > 0"),
    ({"num_batches": 0}, "num_batches must be >= 1"),
    ({"max_length": 4}, "max_length=4"),
])
def test_prune_config_rejects_bad_values_with_the_fix(values, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**values)


@pytest.mark.parametrize(("values", "message"), [
    ({"temperature": 0}, "temperature"), ({"alpha": 1.5}, r"alpha=1.5.*\[0, 1\]"), ({"epochs": 0}, "epochs"),
    ({"patience": -1}, "patience"), ({"holdout_fraction": 0.6}, "holdout_fraction"),
    ({"learning_rate": 0}, "learning_rate"),
])
def test_distill_config_rejects_bad_values_with_the_fix(values, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**values)


def test_steps_are_named_in_recipes_and_round_trip():
    prune = step_config_from_dict({"type": "prune", "head_sparsity": 0.25, "target_latency_ms": 10.0})
    assert isinstance(prune, PruneConfig) and prune.head_sparsity == 0.25
    assert step_config_from_dict(prune.to_dict()) == prune
    distill = step_config_from_dict({"type": "distill", "epochs": 3})
    assert isinstance(distill, DistillConfig) and step_config_from_dict(distill.to_dict()) == distill
    assert PruneConfig.stage < DistillConfig.stage
    with pytest.raises(ConfigError, match="valid options"):
        step_config_from_dict({"type": "prune", "heads": 0.5})


def test_holdout_split_is_seeded_disjoint_and_skipped_for_tiny_sets():
    train, held = split_holdout(480, 0.1, seed=3)
    assert len(held) == 48 and not set(train) & set(held) and sorted(train + held) == list(range(480))
    assert split_holdout(480, 0.1, seed=3) == (train, held)
    assert split_holdout(100, 0.02, seed=0)[1].__len__() == 8  # at least 8 held out
    assert split_holdout(10, 0.1, seed=0)[1] == []
    assert split_holdout(480, 0.0, seed=0)[1] == []


def test_kd_loss_is_zero_for_identical_logits_and_mixes_hard_labels():
    import torch

    from engineforge.build.teacher_student import kd_loss

    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    unlabelled = torch.tensor([-100, -100])
    assert float(kd_loss(teacher, teacher, unlabelled, temperature=2.0, alpha=0.5)) == pytest.approx(0.0, abs=1e-7)
    student = torch.zeros(2, 3)
    kl_only = float(kd_loss(student, teacher, unlabelled, temperature=2.0, alpha=0.5))
    labels = torch.tensor([0, -100])  # one labelled, one not
    mixed = kd_loss(student, teacher, labels, temperature=2.0, alpha=0.5, reduction="none")
    ce = float(torch.nn.functional.cross_entropy(student[:1], labels[:1]))
    per_kl = kd_loss(student, teacher, unlabelled, temperature=2.0, reduction="none")
    assert float(mixed[1]) == pytest.approx(float(per_kl[1]))
    assert float(mixed[0]) == pytest.approx(0.5 * float(per_kl[0]) + 0.5 * ce)
    assert kl_only == pytest.approx(float(per_kl.mean()))


def test_hidden_state_loss_ignores_padding_and_the_embedding_layer():
    import torch

    from engineforge.build.teacher_student import hidden_state_loss

    teacher = [torch.randn(2, 5, 4) for _ in range(3)]  # embeddings + 2 layers
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    student = [t.clone() for t in teacher]
    student[0] += 10  # embedding output is not a target
    student[1][0, 3:] += 100  # padding positions of example 0 are ignored
    assert float(hidden_state_loss(student, teacher, mask)) == 0.0
    student[2][1] += 1.0  # every valid dim of example 1 off by 1 in the last layer
    assert float(hidden_state_loss(student, teacher, mask)) == pytest.approx(0.5 * (5 * 4) / (8 * 4))


def test_augmented_distillation_text_is_deterministic_and_varied():
    from engineforge.build.teacher_student import augment_texts

    texts = ["where is my order it was due on monday", "I want a refund for the broken lamp please"]
    first, again = augment_texts(texts, 3, seed=1), augment_texts(texts, 3, seed=1)
    assert first == again and len(first) == 6
    assert len(set(first)) > 1 and not set(first) <= set(texts)


def test_augment_copies_is_bounded():
    from engineforge.build.steps import DistillConfig
    from engineforge.errors import ConfigError

    with pytest.raises(ConfigError, match="augment_copies"):
        DistillConfig(augment_copies=100)
