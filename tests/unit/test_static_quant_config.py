"""StaticInt8Config validation, recipe round trip and step order: pure logic, no models."""

from __future__ import annotations

import re

import pytest

from engineforge.build.presets import dump_recipe, load_recipe
from engineforge.build.recipe_checks import check_step_order
from engineforge.build.step_registry import step_config_from_dict
from engineforge.build.steps import DynamicInt8Config, ExportConfig, StaticInt8Config, ValidateConfig
from engineforge.errors import ConfigError, StepOrderError


def test_defaults_are_symmetric_int8_per_channel_minmax_with_fallback():
    config = StaticInt8Config()
    assert (config.activation_type, config.per_channel, config.calibration_method) == ("int8", True, "minmax")
    assert config.fallback and config.max_fallback_nodes > 0 and config.keep_fp32 == ()
    assert config.op_types == ("MatMul", "Gemm") and config.sensitivity_granularity == "role"
    assert config.eval_runtimes == ("onnxruntime", "openvino")


@pytest.mark.parametrize(("values", "fragment"), [
    ({"calibration_method": "kl"}, "use one of ('minmax', 'percentile', 'entropy')"),
    ({"percentile": 99.999e1}, "give a percentile in (90, 100]"),
    ({"percentile": 50}, "e.g. 99.999"),
    ({"activation_type": "int4"}, "use 'int8' (symmetric; TensorRT/OpenVINO) or 'uint8'"),
    ({"num_calibration_examples": 0}, "use >= 1 (e.g. 256) or omit it"),
    ({"calibration_batch_size": 0}, "calibration_batch_size=0: use >= 1"),
    ({"op_types": ["Conv"]}, "choose from ['MatMul', 'Gemm', 'Gather']"),
    ({"op_types": []}, "choose from"),
    ({"keep_fp32": "*classifier*"}, "give a list of non-empty strings, e.g. ['*classifier*']"),
    ({"keep_fp32": [""]}, "give a list of non-empty strings"),
    ({"max_fallback_nodes": -1}, "use >= 0"),
    ({"sensitivity_granularity": "head"}, "use one of ('role', 'layer', 'node')"),
    ({"eval_runtimes": ["tensorrt"]}, "choose from ['onnxruntime', 'openvino']"),
    ({"eval_runtimes": "openvino"}, "e.g. ['onnxruntime', 'openvino']"),
])
def test_invalid_values_are_refused_with_the_fix(values, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        StaticInt8Config(**values)


def test_lists_from_recipes_become_tuples_and_the_config_is_frozen():
    config = StaticInt8Config(keep_fp32=["*classifier*"], op_types=["MatMul"])
    assert config.keep_fp32 == ("*classifier*",) and config.op_types == ("MatMul",)
    with pytest.raises(AttributeError):
        config.fallback = False  # type: ignore[misc]


def test_step_type_is_registered_and_round_trips_through_a_recipe(tmp_path):
    step = step_config_from_dict({"type": "static_int8", "calibration_method": "percentile", "percentile": 99.99,
                                  "keep_fp32": ["*classifier*"]})
    assert isinstance(step, StaticInt8Config) and step.percentile == 99.99
    with pytest.raises(ConfigError, match="has no option"):
        step_config_from_dict({"type": "static_int8", "calibration": "minmax"})
    steps = (ExportConfig(), step, ValidateConfig())
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(dump_recipe(steps, {"max_sequence_length": 128}))
    assert load_recipe(recipe)["steps"] == steps


def test_static_and_dynamic_int8_cannot_both_run_and_static_needs_an_export_first():
    with pytest.raises(StepOrderError, match="repeats stage"):
        check_step_order((ExportConfig(), DynamicInt8Config(), StaticInt8Config()))
    with pytest.raises(StepOrderError, match="'export' cannot run after 'static_int8'"):
        check_step_order((StaticInt8Config(), ExportConfig()))
