"""Structured pruning and distillation on tiny BERT checkpoints: real shapes, export, ORT fusion, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engineforge.build.checkpoint import load_checkpoint
from engineforge.build.config import BuildConfig
from engineforge.build.context import AttentionShape, BuildContext
from engineforge.build.pipeline import run_step
from engineforge.build.report import BuildReport
from engineforge.build.runner import run_build
from engineforge.build.steps import (
    DistillConfig,
    ExportConfig,
    GraphOptimizeConfig,
    PruneConfig,
    ValidateConfig,
)
from engineforge.build.steps.prune.prune_importance import measure_importance
from engineforge.build.teacher_student import make_batches, with_teacher_logits
from engineforge.data import Example
from engineforge.errors import DataError
from tests.helpers.tiny_checkpoint import EVAL_TEXTS, TINY_LABELS, make_tiny_checkpoint, write_eval_data

TRAIN_TEXTS = [*EVAL_TEXTS, *(t.upper() for t in EVAL_TEXTS), *(f"{t} thanks" for t in EVAL_TEXTS),
               *(f"hi, {t}" for t in EVAL_TEXTS)]


@pytest.fixture(scope="module")
def sharp_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 heads, FFN 64, with scaled-up weights: attention is peaked and the sublayers outweigh the residual,
    so a wrong head split or a pruned unit shows in the logits (at random init pruning changes ~nothing)."""
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("sharp") / "bert", hidden=32, layers=2, heads=4, seed=1)
    _, model, _ = load_checkpoint(path)
    import torch

    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(8.0)
            layer.attention.self.key.weight.mul_(8.0)
            for linear in (layer.attention.self.value, layer.attention.output.dense, layer.intermediate.dense,
                           layer.output.dense):
                linear.weight.mul_(16.0)
    model.save_pretrained(str(path))
    return path


def _context(checkpoint: Path, tmp_path: Path, train: list[str] | None = TRAIN_TEXTS) -> BuildContext:
    info, model, tokenizer = load_checkpoint(checkpoint)
    config = BuildConfig(checkpoint=checkpoint, output_dir=tmp_path / "out", steps=(PruneConfig(),))
    ctx = BuildContext.start(config, tmp_path, info, model, tokenizer)  # the student is a copy of the model
    assert ctx.model is not ctx.reference_model
    ctx.train_examples = [Example(t) for t in train or []]
    return ctx


def test_prune_shrinks_exactly_the_expected_matrices(sharp_checkpoint, tmp_path):
    ctx = _context(sharp_checkpoint, tmp_path)
    teacher_params = {k: v.clone() for k, v in ctx.reference_model.state_dict().items()}
    details = run_step(ctx, PruneConfig(head_sparsity=0.5, ffn_sparsity=0.5, min_ffn_per_layer=32, num_batches=2))
    for layer in ctx.model.bert.encoder.layer:
        attn = layer.attention.self
        assert (attn.num_attention_heads, attn.attention_head_size, attn.all_head_size) == (2, 8, 16)
        for linear in (attn.query, attn.key, attn.value):
            assert tuple(linear.weight.shape) == (16, 32) and tuple(linear.bias.shape) == (16,)
        assert tuple(layer.attention.output.dense.weight.shape) == (32, 16)
        assert tuple(layer.intermediate.dense.weight.shape) == (32, 32)
        assert tuple(layer.output.dense.weight.shape) == (32, 32)
    assert details["heads_per_layer"] == [2, 2] and details["ffn_per_layer"] == [32, 32]
    assert details["encoder_parameters_after"] < details["encoder_parameters_before"]
    assert ctx.attention == AttentionShape(num_heads=2, hidden_size=16)  # what graph_optimize fuses with
    assert ctx.model.config.pruned_layout == {"heads_per_layer": [2, 2], "intermediate_sizes": [32, 32],
                                              "attention_head_size": 8}
    json.dumps(details)  # goes into the build report as is
    # The teacher is untouched and the student still runs.
    for key, value in ctx.reference_model.state_dict().items():
        assert value.shape == teacher_params[key].shape and bool((value == teacher_params[key]).all())
    batch = make_batches(ctx, ctx.train_examples[:3], 3, 64)[0]
    assert ctx.model(**batch.inputs).logits.shape == (3, len(TINY_LABELS))


def test_extreme_ffn_sparsity_never_empties_a_layer(sharp_checkpoint, tmp_path):
    ctx = _context(sharp_checkpoint, tmp_path)
    details = run_step(ctx, PruneConfig(head_sparsity=0.9, ffn_sparsity=0.9, num_batches=1))
    assert details["heads_per_layer"] == [1, 1]
    assert all(n >= 1 for n in details["ffn_per_layer"]) and sum(details["ffn_per_layer"]) == round(128 * 0.1)


def test_a_head_with_zeroed_weights_ranks_lowest(sharp_checkpoint, tmp_path):
    import torch

    ctx = _context(sharp_checkpoint, tmp_path)
    value = ctx.model.bert.encoder.layer[1].attention.self.value
    with torch.no_grad():  # head 2 of layer 1 now outputs zeros: removing it changes nothing
        value.weight[16:24] = 0
        value.bias[16:24] = 0
    batches = with_teacher_logits(ctx.reference_model, make_batches(ctx, ctx.train_examples, 8, 64))
    scores = measure_importance(ctx.model, batches).heads
    assert int(np.argmin(scores[1])) == 2 and scores[1][2] == 0.0 and scores[1].max() > 0
    details = run_step(ctx, PruneConfig(head_sparsity=0.25, ffn_sparsity=0.0, num_batches=4, batch_size=8))
    assert 2 not in details["head_importance"][1]["kept_indices"]


def test_pruned_model_exports_and_fuses_to_a_graph_that_matches_torch(sharp_checkpoint, tmp_path):
    ctx = _context(sharp_checkpoint, tmp_path)
    ctx.eval_examples = [Example(t) for t in EVAL_TEXTS]
    run_step(ctx, PruneConfig(head_sparsity=0.5, ffn_sparsity=0.4, num_batches=2))  # FFN sizes differ per layer
    exported = run_step(ctx, ExportConfig())  # raises if ONNX and torch differ by > 1e-3
    optimized = run_step(ctx, GraphOptimizeConfig())
    assert exported["max_abs_diff_vs_torch"] < 1e-4
    assert optimized["fused_ops"]["Attention"] == 2 and optimized["missing_fusions"] == []
    assert optimized["attention_fusion"] == {"num_heads": 2, "hidden_size": 16}
    assert optimized["max_abs_diff_vs_torch"] < 1e-4


def test_distillation_lowers_the_student_teacher_loss(sharp_checkpoint, tmp_path):
    ctx = _context(sharp_checkpoint, tmp_path)
    run_step(ctx, PruneConfig(head_sparsity=0.5, ffn_sparsity=0.5, num_batches=2))
    details = run_step(ctx, DistillConfig(epochs=6, learning_rate=3e-3, batch_size=8, temperature=2.0, patience=0))
    assert details["kl_after"] < 0.7 * details["kl_before"]
    assert details["best_epoch"] >= 1 and details["epochs_run"] == 6
    assert not ctx.model.training
    json.dumps(details)


def test_augmented_distillation_trains_on_more_text_and_still_lowers_the_loss(sharp_checkpoint, tmp_path):
    ctx = _context(sharp_checkpoint, tmp_path)
    run_step(ctx, PruneConfig(head_sparsity=0.5, ffn_sparsity=0.5, num_batches=2))
    plain = len(ctx.train_examples)
    details = run_step(ctx, DistillConfig(epochs=3, learning_rate=3e-3, batch_size=8, patience=0, augment_copies=2))
    assert details["texts"] == plain
    # The originals minus the held-out slice, plus two variants of each.
    assert details["trained_on"] == 3 * (plain - details["held_out"])
    assert details["kl_after"] < details["kl_before"]


def test_unlabelled_text_is_distilled_together_with_the_training_text(sharp_checkpoint, tmp_path):
    ctx = _context(sharp_checkpoint, tmp_path)
    run_step(ctx, PruneConfig(head_sparsity=0.5, ffn_sparsity=0.5, num_batches=2))
    ctx.unlabelled_examples = [Example(f"please, {t}?") for t in EVAL_TEXTS]
    details = run_step(ctx, DistillConfig(epochs=2, learning_rate=3e-3, batch_size=8, patience=0))
    assert details["texts"] == len(TRAIN_TEXTS) + len(EVAL_TEXTS)
    assert details["data"].startswith(f"{details['texts']} texts (train + {len(EVAL_TEXTS)} unlabelled)")
    assert details["kl_after"] < details["kl_before"]


def test_unlabelled_text_alone_is_enough_for_distillation(sharp_checkpoint, tmp_path):
    ctx = _context(sharp_checkpoint, tmp_path, train=None)
    ctx.unlabelled_examples = [Example(t) for t in TRAIN_TEXTS]
    details = run_step(ctx, DistillConfig(epochs=1, batch_size=8, patience=0))
    assert details["texts"] == len(TRAIN_TEXTS) and "(unlabelled)" in details["data"]


@pytest.mark.parametrize("step", ["prune", "distill"])
def test_steps_refuse_to_run_without_data(tiny_checkpoint, tmp_path, step):
    ctx = _context(tiny_checkpoint, tmp_path, train=None)
    with pytest.raises(DataError, match="--train-data"):
        run_step(ctx, PruneConfig()) if step == "prune" else run_step(ctx, DistillConfig())


def test_calibration_text_is_used_when_no_train_data_is_given(tiny_checkpoint, tmp_path):
    ctx = _context(tiny_checkpoint, tmp_path, train=None)
    ctx.calibration_examples = [Example(t) for t in EVAL_TEXTS]
    assert run_step(ctx, PruneConfig(num_batches=1))["data"].endswith("calibration examples in 1 batches")


def test_full_build_prune_distill_export_optimize_validate(sharp_checkpoint, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t}) + "\n" for t in TRAIN_TEXTS))
    eval_data = write_eval_data(tmp_path / "eval.jsonl", sharp_checkpoint)
    unlabelled = tmp_path / "logs.jsonl"  # a label in it is ignored: the teacher labels this text
    unlabelled.write_text("".join(json.dumps({"text": f"hello, {t}", "label": TINY_LABELS[0]}) + "\n"
                                  for t in EVAL_TEXTS))
    steps = (PruneConfig(num_batches=2), DistillConfig(epochs=2, batch_size=8), ExportConfig(),
             GraphOptimizeConfig(), ValidateConfig(max_accuracy_drop=100, min_agreement=0))
    report = run_build(BuildConfig(checkpoint=sharp_checkpoint, output_dir=tmp_path / "out", steps=steps,
                                   eval_data=eval_data, train_data=train, unlabelled_data=unlabelled))
    assert report.status == "ok"
    distilled = report.step("distill").details
    assert distilled["texts"] == len(TRAIN_TEXTS) + len(EVAL_TEXTS)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["data"]["unlabelled"]["path"] == str(unlabelled)
    assert f'unlabelled_data = "{unlabelled.resolve()}"' in (tmp_path / "out" / "recipe.toml").read_text()
    assert [s.name for s in report.steps] == ["prune", "distill", "export", "graph_optimize", "validate"]
    assert report.steps[3].details["fused_ops"]["Attention"] == 2
    assert BuildReport.load(tmp_path / "out").steps[0].details["heads_per_layer"]
