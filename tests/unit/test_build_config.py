"""Step configs, ordering, prerequisites, presets and recipes: pure logic, no models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engineforge.build.config import BuildConfig
from engineforge.build.pipeline import check_build, prepare_output_dir
from engineforge.build.presets import PRESET_NAMES, dump_recipe, load_recipe, preset_steps
from engineforge.build.recipe_checks import check_step_order
from engineforge.build.step_registry import step_config_from_dict
from engineforge.build.steps import (
    DynamicInt8Config,
    ExportConfig,
    GraphOptimizeConfig,
    PublishConfig,
    ValidateConfig,
)
from engineforge.errors import ConfigError, StepOrderError


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        (lambda: ExportConfig(opset=9), "opset"),
        (lambda: ValidateConfig(min_agreement=98), "fraction in [0, 1]"),
        (lambda: ValidateConfig(max_accuracy_drop=-1), "percentage points"),
        (lambda: DynamicInt8Config(weight_type="int4"), "use 'int8'"),
        (lambda: PublishConfig(model_name="my model!"), "letters, digits"),
        (lambda: PublishConfig(model_name=".hidden"), "starting with a letter or digit"),
        (lambda: PublishConfig(max_batch_size=0), "max_batch_size"),
    ],
)
def test_invalid_values_are_refused_with_the_fix(factory, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        factory()


def test_configs_are_frozen():
    config = ValidateConfig()
    with pytest.raises(AttributeError):
        config.min_agreement = 0.5  # type: ignore[misc]


def test_quantizing_before_export_is_refused():
    with pytest.raises(StepOrderError, match="cannot run after 'dynamic_int8'"):
        check_step_order((ExportConfig(), DynamicInt8Config(), GraphOptimizeConfig()))


def test_publishing_before_validation_is_refused():
    with pytest.raises(StepOrderError, match="'validate' cannot run after 'publish'"):
        check_step_order((ExportConfig(), PublishConfig(), ValidateConfig()))


def test_repeated_step_is_refused():
    with pytest.raises(StepOrderError, match="repeats"):
        check_step_order((ExportConfig(), DynamicInt8Config(), DynamicInt8Config(per_channel=False)))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_is_in_a_valid_order_and_satisfiable_with_its_data(name, tmp_path):
    check_step_order(preset_steps(name))
    data = {kind: tmp_path / f"{kind}.jsonl" for kind in ("eval_data", "train_data", "calibration_data",
                                                          "unlabelled_data")}
    check_build(BuildConfig(checkpoint=tmp_path / "ckpt", output_dir=tmp_path / "out", steps=preset_steps(name),
                            **data))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="int8"):
        preset_steps("turbo")


def test_unknown_step_option_is_refused():
    with pytest.raises(ConfigError, match="no option"):
        step_config_from_dict({"type": "validate", "min_agreemnt": 0.9})


def test_recipe_round_trips(tmp_path: Path):
    steps = (ExportConfig(opset=17), GraphOptimizeConfig(opt_level=2), DynamicInt8Config(per_channel=False),
             ValidateConfig(max_accuracy_drop=0.5, min_agreement=0.99), PublishConfig(model_name="intent"))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(dump_recipe(steps, {"max_sequence_length": 64, "eval_data": "eval.jsonl",
                                          "unlabelled_data": "logs/unlabelled.jsonl"}))
    loaded = load_recipe(recipe)
    assert loaded["steps"] == steps
    assert loaded["max_sequence_length"] == 64
    assert loaded["eval_data"] == (tmp_path / "eval.jsonl").resolve()
    assert loaded["unlabelled_data"] == (tmp_path / "logs" / "unlabelled.jsonl").resolve()


def test_recipe_with_unknown_key_is_refused(tmp_path: Path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('preset = "int8"\nthreads = 4\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_recipe(recipe)


def test_output_inside_checkpoint_is_refused(tmp_path: Path):
    (tmp_path / "ckpt").mkdir()
    config = BuildConfig(checkpoint=tmp_path / "ckpt", output_dir=tmp_path / "ckpt" / "out", steps=preset_steps("int8"))
    with pytest.raises(ConfigError, match="overwrite the input checkpoint"):
        prepare_output_dir(config)


def test_non_empty_output_needs_overwrite(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    config = BuildConfig(checkpoint=tmp_path / "ckpt", output_dir=out, steps=preset_steps("int8"))
    with pytest.raises(ConfigError, match="--overwrite"):
        prepare_output_dir(config)
    prepare_output_dir(BuildConfig(checkpoint=tmp_path / "ckpt", output_dir=out, steps=preset_steps("int8"),
                                   overwrite=True))
    assert not (out / "old.txt").exists()
