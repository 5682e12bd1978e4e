"""plan_serving: length buckets and threads x instances measured on the build's traffic, written to engine.json and
honoured by validate (the engine as served)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engineforge.build.config import BuildConfig
from engineforge.build.pipeline import check_build
from engineforge.build.runner import run_build
from engineforge.build.steps import (
    CompileConfig,
    DynamicInt8Config,
    ExportConfig,
    PlanServingConfig,
    SelectRuntimeConfig,
    ValidateConfig,
)
from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import ConfigError, MissingPrerequisiteError, StepOrderError

FAST = {"calls": 10, "seconds_per_layout": 0.3, "rounds": 1}


def _build(checkpoint: Path, eval_data: Path, out: Path, *steps: object) -> tuple[object, EngineSpec]:
    report = run_build(BuildConfig(checkpoint=checkpoint, output_dir=out, eval_data=eval_data,
                                   steps=(ExportConfig(), *steps, ValidateConfig())))
    return report, EngineSpec.load(out / "engine")


def test_openvino_engine_gets_a_measured_plan_in_engine_json(tiny_checkpoint, tiny_eval_data, tmp_path):
    # min_gain -1: keep the buckets whatever the timing says, so that validate runs the bucketed engine.
    report, spec = _build(tiny_checkpoint, tiny_eval_data, tmp_path / "out",
                          SelectRuntimeConfig(candidates=("openvino",), iterations=5),
                          PlanServingConfig(min_gain=0.0, **(FAST | {"rounds": 2})))
    details = report.step("plan_serving").details
    plan = spec.serving_plan
    assert spec.runtime == "openvino"
    assert plan["length_buckets"]["candidates"][-1] == spec.max_sequence_length
    assert set(plan["length_buckets"]["ms_per_call"]) == {"1", "4"}
    assert all(set(v) == {"none", "buckets"} for v in plan["length_buckets"]["ms_per_call"].values())
    assert spec.bucket_max_batch == plan["length_buckets"]["max_batch"] == details["bucket_max_batch"]
    assert len(plan["length_buckets"]["rounds"]) == 2 and "the median of 2 comparisons" in details["buckets_reason"]
    assert list(spec.length_buckets) == details["length_buckets"] == plan["length_buckets"]["buckets"]
    assert spec.intra_op_threads == plan["intra_op_threads"] == details["intra_op_threads"]
    assert plan["instances"] >= 1 and "measured on the traffic profile" in plan["why"]
    assert {(r["instances"], r["intra_op_threads"]) for r in plan["candidates"]} >= {(1, plan["cores"])}
    assert all(r["requests_per_s"] > 0 and r["batch1_p50_ms"] > 0 for r in plan["candidates"])
    assert report.validation["agreement"] == 1.0  # validate ran the served (bucketed) engine: same answers


def test_dynamic_int8_is_never_bucketed_and_fixed_threads_are_kept(tiny_checkpoint, tiny_eval_data, tmp_path):
    _, spec = _build(tiny_checkpoint, tiny_eval_data, tmp_path / "out", DynamicInt8Config(),
                     PlanServingConfig(min_gain=0.0, threads="fixed", **FAST))
    assert spec.length_buckets == () and "per tensor at run time" in spec.serving_plan["length_buckets"]["reason"]
    assert "instances" not in spec.serving_plan and spec.intra_op_threads == 2  # the build's setting


def test_buckets_off_times_nothing(tiny_checkpoint, tiny_eval_data, tmp_path):
    report, spec = _build(tiny_checkpoint, tiny_eval_data, tmp_path / "out",
                          PlanServingConfig(buckets="off", threads="fixed"))
    assert spec.length_buckets == () and spec.serving_plan["length_buckets"]["reason"].startswith("buckets = \"off\"")
    assert "bucket_ms_per_call" not in report.step("plan_serving").details


@pytest.mark.parametrize(("options", "fix"), [({"buckets": "on"}, "use \"auto\""), ({"threads": 2}, "\"fixed\""),
                                              ({"min_gain": 1.5}, "e.g. 0.05"), ({"concurrency": 0}, "e.g. 4"),
                                              ({"rounds": 0}, "e.g. 3")])
def test_bad_options_are_refused_with_the_fix(options, fix):
    with pytest.raises(ConfigError, match=fix):
        PlanServingConfig(**options)


def test_recipes_where_it_cannot_run_are_refused_before_any_work(tiny_checkpoint, tiny_eval_data, tmp_path):
    def config(*steps: object) -> BuildConfig:
        return BuildConfig(checkpoint=tiny_checkpoint, output_dir=tmp_path / "o", eval_data=tiny_eval_data,
                           steps=steps)

    with pytest.raises(StepOrderError, match="move 'export' earlier"):
        check_build(config(PlanServingConfig(), ExportConfig()))
    with pytest.raises(MissingPrerequisiteError, match=r"plan_serving' needs an ONNX graph.*add 'export'"):
        check_build(config(PlanServingConfig(), ValidateConfig()))
    with pytest.raises(ConfigError, match="'compile' makes an engine served elsewhere: drop 'plan_serving'"):
        check_build(config(ExportConfig(), CompileConfig(), PlanServingConfig(), ValidateConfig()))
    assert not (tmp_path / "o").exists()


def test_without_texts_nothing_is_measured(tiny_checkpoint, tmp_path):
    report = run_build(BuildConfig(checkpoint=tiny_checkpoint, output_dir=tmp_path / "out",
                                   steps=(ExportConfig(), PlanServingConfig())))
    assert "pass --eval-data" in report.step("plan_serving").details["skipped"]
    spec = EngineSpec.load(tmp_path / "out" / "engine")
    assert spec.length_buckets == () and spec.serving_plan is None and spec.intra_op_threads == 2
