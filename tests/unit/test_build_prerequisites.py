"""Step prerequisites: every recipe that lacks an artefact (ONNX graph, torch model, data) is refused with a
typed error and the fix, before anything is loaded or written."""

from __future__ import annotations

from pathlib import Path

import pytest

from engineforge.build.config import BuildConfig
from engineforge.build.pipeline import check_build
from engineforge.build.runner import run_build
from engineforge.build.steps import (
    Bnb4BitConfig,
    DistillConfig,
    DynamicInt8Config,
    ExportConfig,
    GraphOptimizeConfig,
    Int4WeightOnlyConfig,
    PruneConfig,
    PublishConfig,
    SelectRuntimeConfig,
    StaticInt8Config,
    ValidateConfig,
)
from engineforge.errors import MissingPrerequisiteError, StepOrderError
from tests.helpers.tiny_checkpoint import shell_checkpoint

ALL_DATA = ("eval_data", "train_data", "calibration_data", "unlabelled_data")

# (steps, data files given, the refusal's message): each recipe misses exactly one prerequisite.
UNSATISFIABLE = [
    ((DynamicInt8Config(), ValidateConfig()), ALL_DATA, r"'dynamic_int8' needs an ONNX graph.*add 'export'"),
    ((GraphOptimizeConfig(),), ALL_DATA, r"'graph_optimize' needs an ONNX graph.*add 'export'"),
    ((Int4WeightOnlyConfig(),), ALL_DATA, r"'int4_weight_only' needs an ONNX graph"),
    ((StaticInt8Config(), ValidateConfig()), ALL_DATA, r"'static_int8' needs the plain \(unfused\) ONNX export"),
    ((SelectRuntimeConfig(), ValidateConfig()), ALL_DATA, r"'select_runtime' needs an ONNX graph"),
    ((ValidateConfig(),), ALL_DATA, r"'validate' needs an engine.*add 'bnb_4bit' or 'export'"),
    ((PublishConfig(),), ALL_DATA, r"'publish' needs an engine"),
    ((ExportConfig(), ValidateConfig()), ("train_data",), r"'validate' needs labelled eval data: pass --eval-data"),
    ((ExportConfig(), SelectRuntimeConfig()), (), r"'select_runtime' needs labelled eval data"),
    ((ExportConfig(), StaticInt8Config(), ValidateConfig()), ("eval_data", "train_data"),
     r"'static_int8' needs representative calibration data.*pass --calibration-data FILE"),
    ((ExportConfig(), StaticInt8Config(fallback=True)), ("calibration_data",),
     r"'static_int8' needs labelled eval data"),  # its fp32 fallback measures accuracy
    ((PruneConfig(), ExportConfig()), ("eval_data", "unlabelled_data"),
     r"'prune' needs representative training text: pass --train-data FILE"),
    ((DistillConfig(), ExportConfig()), ("eval_data",), r"'distill' needs text to distil on.*--unlabelled-data"),
    ((Bnb4BitConfig(), ExportConfig()), ALL_DATA, r"'export' needs an exportable PyTorch model, but 'bnb_4bit'"),
    ((PruneConfig(), Bnb4BitConfig(), ValidateConfig()), ALL_DATA, r"'bnb_4bit' needs .* but 'prune' before it"),
]


def _config(tmp_path: Path, steps: tuple, data: tuple[str, ...]) -> BuildConfig:
    return BuildConfig(checkpoint=shell_checkpoint(tmp_path / "shell"), output_dir=tmp_path / "out", steps=steps,
                       **{name: tmp_path / f"{name}.jsonl" for name in data})


@pytest.mark.parametrize(("steps", "data", "message"), UNSATISFIABLE,
                         ids=lambda v: "+".join(s.step_type for s in v) if isinstance(v, tuple) and v and
                         not isinstance(v[0], str) else None)
def test_unsatisfiable_recipe_is_refused_before_any_work(tmp_path, steps, data, message):
    with pytest.raises(MissingPrerequisiteError, match=message):
        run_build(_config(tmp_path, steps, data))  # the checkpoint's weights are never loaded
    assert not (tmp_path / "out").exists()


def test_the_missing_step_or_data_satisfies_it(tmp_path):
    check_build(_config(tmp_path, (ExportConfig(), DynamicInt8Config(), ValidateConfig()), ("eval_data",)))
    check_build(_config(tmp_path, (ExportConfig(), StaticInt8Config(fallback=False)), ("calibration_data",)))
    check_build(_config(tmp_path, (PruneConfig(), DistillConfig(), ExportConfig()), ("calibration_data",)))
    check_build(_config(tmp_path, (DistillConfig(), ExportConfig()), ("unlabelled_data",)))
    # static_int8 quantizes the plain export, which graph_optimize leaves in place
    check_build(_config(tmp_path, (ExportConfig(), GraphOptimizeConfig(), StaticInt8Config(), ValidateConfig()),
                        ("eval_data", "calibration_data")))


def test_prerequisite_errors_are_order_errors_for_callers_that_catch_those(tmp_path):
    with pytest.raises(StepOrderError):
        check_build(_config(tmp_path, (ValidateConfig(),), ALL_DATA))


def test_every_missing_prerequisite_is_in_one_refusal_and_giving_them_passes(tmp_path):
    steps = (ExportConfig(), StaticInt8Config(), ValidateConfig())
    with pytest.raises(MissingPrerequisiteError) as refused:
        check_build(_config(tmp_path, steps, ("train_data",)))
    message = str(refused.value)
    assert message.startswith("this recipe cannot run:\n")
    assert [line for line in message.splitlines() if line.startswith("- ")] == [
        "- step 'static_int8' needs representative calibration data to fix int8 activation ranges",
        "- steps 'static_int8' and 'validate' need labelled eval data"]  # static_int8's fp32 fallback measures it
    fix = message.split("\nFix: ")[1]
    assert fix.count("pass --eval-data") == 1 and fix.count("pass --calibration-data") == 1  # each fix once
    check_build(_config(tmp_path, steps, ("train_data", "calibration_data", "eval_data")))


def test_a_consequence_of_a_missing_step_is_not_a_second_blocker(tmp_path):
    with pytest.raises(MissingPrerequisiteError) as refused:  # validate lacks an engine only because export does
        check_build(_config(tmp_path, (DynamicInt8Config(), ValidateConfig()), ALL_DATA))
    assert "\n" not in str(refused.value) and "'validate'" not in str(refused.value)
    check_build(_config(tmp_path, (ExportConfig(), DynamicInt8Config(), ValidateConfig()), ALL_DATA))
