"""4-bit weight-only steps: config validation, refusal of ONNX steps after bnb_4bit, module planning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engineforge.build.config import BuildConfig
from engineforge.build.pipeline import check_build
from engineforge.build.presets import dump_recipe, load_recipe
from engineforge.build.recipe_checks import check_step_order
from engineforge.build.step_registry import step_config_from_dict
from engineforge.build.steps import (
    Bnb4BitConfig,
    DynamicInt8Config,
    ExportConfig,
    GraphOptimizeConfig,
    Int4WeightOnlyConfig,
    PruneConfig,
    PublishConfig,
    ValidateConfig,
    plan_bnb_modules,
)
from engineforge.errors import ConfigError, MissingPrerequisiteError, StepOrderError
from tests.helpers.tiny_checkpoint import shell_checkpoint


def _config(tmp_path: Path, *steps) -> BuildConfig:
    return BuildConfig(checkpoint=shell_checkpoint(tmp_path / "shell"), output_dir=tmp_path / "out", steps=steps,
                       eval_data=tmp_path / "eval.jsonl", train_data=tmp_path / "train.jsonl")


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        (lambda: Int4WeightOnlyConfig(block_size=48), "power of two >= 16"),
        (lambda: Int4WeightOnlyConfig(block_size=8), "power of two >= 16"),
        (lambda: Int4WeightOnlyConfig(accuracy_level=7), "use 0-4"),
        (lambda: Bnb4BitConfig(quant_type="int4"), "use 'nf4'"),
        (lambda: Bnb4BitConfig(compute_dtype="float16"), "float16 is slow"),
    ],
)
def test_invalid_values_are_refused_with_the_fix(factory, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        factory()


def test_recipe_names_the_new_steps_and_round_trips(tmp_path: Path):
    assert isinstance(step_config_from_dict({"type": "bnb_4bit", "quant_type": "fp4"}), Bnb4BitConfig)
    steps = (ExportConfig(), GraphOptimizeConfig(), Int4WeightOnlyConfig(block_size=64, symmetric=True,
                                                                         exclude_nodes=("/x/MatMul",)),
             ValidateConfig())
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(dump_recipe(steps, {}))
    assert load_recipe(recipe)["steps"] == steps  # accuracy_level=None is omitted and comes back as None


def test_export_after_bnb_is_refused_naming_both_steps(tmp_path: Path):
    with pytest.raises(MissingPrerequisiteError,
                       match=r"step 'export' needs an exportable PyTorch model, but 'bnb_4bit' before it replaced "
                             r"the model with bitsandbytes 4-bit layers.*drop 'export', or drop 'bnb_4bit'"):
        check_build(_config(tmp_path, Bnb4BitConfig(), ExportConfig(), ValidateConfig()))


@pytest.mark.parametrize("onnx_step", [GraphOptimizeConfig(), DynamicInt8Config(), Int4WeightOnlyConfig()])
def test_onnx_steps_after_bnb_without_export_are_refused(tmp_path: Path, onnx_step):
    with pytest.raises(MissingPrerequisiteError, match=rf"step '{onnx_step.step_type}' needs an ONNX graph.*'export'"):
        check_build(_config(tmp_path, Bnb4BitConfig(), onnx_step, ValidateConfig()))


def test_bnb_after_prune_is_refused_before_any_work(tmp_path: Path):
    from engineforge.build.runner import run_build

    with pytest.raises(MissingPrerequisiteError, match=r"'bnb_4bit' needs the model in its checkpoint's standard "
                                                       r"layout, but 'prune' before it left a per-layer pruned layout"):
        run_build(_config(tmp_path, PruneConfig(), Bnb4BitConfig(), ValidateConfig()))  # weights never loaded
    assert not (tmp_path / "out").exists()


def test_bnb_with_validate_and_publish_is_a_valid_build(tmp_path: Path):
    check_build(_config(tmp_path, Bnb4BitConfig(), ValidateConfig(), PublishConfig()))


def test_int4_and_dynamic_int8_share_a_stage():
    with pytest.raises(StepOrderError, match="repeats stage"):
        check_step_order((ExportConfig(), DynamicInt8Config(), Int4WeightOnlyConfig()))


def test_plan_skips_classifier_and_shapes_the_cpu_kernel_cannot_take():
    import torch

    model = torch.nn.ModuleDict({
        "encoder": torch.nn.ModuleDict({"dense": torch.nn.Linear(64, 128), "odd_out": torch.nn.Linear(64, 40),
                                        "odd_in": torch.nn.Linear(48, 64)}),
        "pooler": torch.nn.Linear(64, 64),
        "classifier": torch.nn.Linear(64, 3),
    })
    quantize, skipped = plan_bnb_modules(model, keep=("pooler",))
    assert quantize == ["encoder.dense"]
    assert skipped == {
        "encoder.odd_out": "out_features 40 not a multiple of 32",
        "encoder.odd_in": "in_features 48 not a multiple of 64",
        "pooler": "kept full precision",
        "classifier": "kept full precision",
    }
