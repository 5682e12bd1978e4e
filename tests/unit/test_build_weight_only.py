"""4-bit weight-only steps: config validation, refusal of ONNX steps beside bnb_4bit, module planning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engineforge.build.config import (
    DynamicInt8Config,
    ExportConfig,
    GraphOptimizeConfig,
    PublishConfig,
    ValidateConfig,
    step_config_from_dict,
)
from engineforge.build.pipeline import check_step_order
from engineforge.build.presets import dump_recipe, load_recipe
from engineforge.build.weight_only import Bnb4BitConfig, Int4WeightOnlyConfig, plan_bnb_modules
from engineforge.errors import ConfigError, StepOrderError


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


@pytest.mark.parametrize(
    "onnx_step", [ExportConfig(), GraphOptimizeConfig(), DynamicInt8Config(), Int4WeightOnlyConfig()]
)
def test_bnb_with_any_onnx_step_is_refused(onnx_step):
    steps = tuple(sorted((Bnb4BitConfig(), onnx_step, ValidateConfig()), key=lambda s: s.stage))
    message = rf"'bnb_4bit' makes a model that cannot be exported.*'{onnx_step.step_type}'"
    with pytest.raises(StepOrderError, match=message):
        check_step_order(steps)


def test_refusal_comes_before_any_work(tmp_path: Path):
    from engineforge.build.config import BuildConfig
    from engineforge.build.runner import run_build

    config = BuildConfig(checkpoint=tmp_path / "missing", output_dir=tmp_path / "out",
                         steps=(Bnb4BitConfig(), ExportConfig(), ValidateConfig()))
    with pytest.raises(StepOrderError, match="drop those steps"):  # not a CheckpointError: nothing was loaded
        run_build(config)
    assert not (tmp_path / "out").exists()


def test_bnb_with_validate_and_publish_is_a_valid_order():
    check_step_order((Bnb4BitConfig(), ValidateConfig(), PublishConfig()))
    assert Bnb4BitConfig.onnx_incompatible and not Int4WeightOnlyConfig.onnx_incompatible
    assert Int4WeightOnlyConfig.operates_on_onnx() and not Bnb4BitConfig.operates_on_onnx()
    assert not ValidateConfig.operates_on_onnx() and not PublishConfig.operates_on_onnx()


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
