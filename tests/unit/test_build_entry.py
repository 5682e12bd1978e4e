"""The one build entry (engineforge.commands.build_engine): a toy step registered from this file alone builds
through it; every candidate is checked once, before any work, TensorRT included; a publish step whose function
the serve side has not registered is a typed refusal; what a step returns is held to the artefacts it declares."""

from __future__ import annotations

import importlib.util
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from engineforge.build import pipeline, step_registry
from engineforge.build.config import TORCH_MODEL, BuildConfig, StepConfig, require
from engineforge.build.context import BuildContext
from engineforge.build.pipeline import run_step
from engineforge.build.presets import preset_steps
from engineforge.build.step_output import StepContractError, StepOutput, as_output, contract_problems
from engineforge.build.step_registry import StepNotRegisteredError, register_step, step_config_from_dict
from engineforge.build.steps import DynamicInt8Config, ExportConfig, PublishConfig
from engineforge.commands.build_engine import build_engine, prepare_build
from engineforge.errors import CompileError, ConfigError
from tests.helpers.tiny_checkpoint import make_tiny_checkpoint, shell_checkpoint, write_eval_data


@pytest.fixture
def toy_step(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[StepConfig]]:
    """A step that counts the torch model's parameters, registered here and nowhere else (the registry is
    restored afterwards, so other tests never see it)."""
    monkeypatch.setattr(step_registry, "_FUNCTIONS", dict(step_registry._FUNCTIONS))
    monkeypatch.setattr(step_registry, "STEP_CONFIG_TYPES", dict(step_registry.STEP_CONFIG_TYPES))

    @dataclass(frozen=True)
    class CountParametersConfig(StepConfig):
        step_type: ClassVar[str] = "count_parameters"
        stage: ClassVar[int] = 15  # between prune and distill: a free stage
        requires = frozenset({TORCH_MODEL})

        note: str = "counted"

        def __post_init__(self) -> None:
            require(bool(self.note), "count_parameters.note must not be empty")

    @register_step(CountParametersConfig)
    def count_parameters(ctx: BuildContext, config: CountParametersConfig) -> dict[str, Any]:
        return {"parameters": sum(p.numel() for p in ctx.model.parameters()), "note": config.note}

    yield CountParametersConfig


def test_a_toy_step_registered_in_this_file_builds_through_the_one_entry(toy_step, tmp_path: Path):
    checkpoint = make_tiny_checkpoint(tmp_path / "tiny-bert")
    out = tmp_path / "out"
    report = build_engine(checkpoint, steps=(toy_step(note="hello"),), output_dir=out, publish=False)
    assert report.status == "ok"
    (record,) = report.steps
    assert record.name == "count_parameters" and record.details["note"] == "hello"
    assert record.details["parameters"] > 1000
    # A recipe names the toy step by its step_type: the written recipe reads back into the same step.
    written = tomllib.loads((out / "recipe.toml").read_text())["steps"]
    assert written == [{"type": "count_parameters", "note": "hello"}]
    assert step_config_from_dict(written[0]) == toy_step(note="hello")


def test_every_candidate_is_checked_once(toy_step, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    checks: list[BuildConfig] = []
    real = pipeline.recipe_blockers
    monkeypatch.setattr(pipeline, "recipe_blockers", lambda config: checks.append(config) or real(config))
    build_engine(make_tiny_checkpoint(tmp_path / "tiny-bert"), steps=(toy_step(),), output_dir=tmp_path / "out",
                 publish=False)
    assert len(checks) == 1
    checks.clear()
    data = write_eval_data(tmp_path / "eval.jsonl")
    prepared = prepare_build(shell_checkpoint(tmp_path / "shell"), preset="fast-cpu", output_dir=tmp_path / "ladder",
                             data={"eval_data": data, "train_data": data, "calibration_data": data})
    assert len(prepared.candidates) == 4 and len(checks) == 4
    assert not (tmp_path / "ladder").exists()


def _without_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("tensorrt", "tensorrt_rtx") else real(name, *args))


@pytest.mark.parametrize("preset", ["trt-fp16", "trt-int8"])
def test_a_compile_build_without_tensorrt_is_refused_before_any_work(preset: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    _without_tensorrt(monkeypatch)
    ran: list[str] = []
    monkeypatch.setattr(step_registry, "_FUNCTIONS", {
        config_type: lambda ctx, config: ran.append(config.step_type) or {}
        for config_type in step_registry._FUNCTIONS})
    data = write_eval_data(tmp_path / "eval.jsonl")
    out = tmp_path / "out"
    with pytest.raises(CompileError, match=r"the compile step needs TensorRT: install TensorRT"):
        build_engine(shell_checkpoint(tmp_path / "shell"), preset=preset, output_dir=out,
                     data={"eval_data": data, "train_data": data, "calibration_data": data})
    assert ran == [] and not out.exists()  # prune, distill, export and static_int8 never started


def test_publish_without_the_serve_side_registered_is_a_typed_refusal(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(step_registry, "_FUNCTIONS", {
        config_type: fn for config_type, fn in step_registry._FUNCTIONS.items() if config_type is not PublishConfig})
    config = BuildConfig(checkpoint=shell_checkpoint(tmp_path / "shell"), output_dir=tmp_path / "out",
                         steps=preset_steps("int8"), eval_data=tmp_path / "eval.jsonl")
    with pytest.raises(StepNotRegisteredError, match=r"'publish' is registered by engineforge\.serve\.publish_step"):
        pipeline.check_build(config)
    assert issubclass(StepNotRegisteredError, ConfigError)
    with pytest.raises(StepNotRegisteredError):
        step_registry.step_function(PublishConfig())


def test_the_entry_refuses_two_kinds_of_recipe_at_once(tmp_path: Path):
    with pytest.raises(ConfigError, match="not several"):
        prepare_build(shell_checkpoint(tmp_path / "shell"), preset="int8", steps=preset_steps("fp32"))
    with pytest.raises(ConfigError, match="unknown build setting"):
        prepare_build(shell_checkpoint(tmp_path / "shell"), preset="int8", max_seq_len=64)


def test_a_step_output_must_match_the_artefacts_its_config_declares(tmp_path: Path):
    graph = tmp_path / "model.onnx"
    assert contract_problems(ExportConfig(), StepOutput(onnx_path=graph, plain_onnx_path=graph)) == []
    assert contract_problems(ExportConfig(), StepOutput(onnx_path=graph)) == [
        "declares it provides the plain (unfused) ONNX export but returned no plain_onnx_path"]
    assert contract_problems(DynamicInt8Config(), StepOutput(onnx_path=graph, plan_path=graph)) == [
        "returned plan_path but declares no artefact it holds"]
    assert contract_problems(DynamicInt8Config(), as_output({"size_mb": 1.0})) == [
        "declares it provides an ONNX graph but returned no onnx_path"]


def test_run_step_applies_what_the_step_returns_and_refuses_a_broken_promise(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    graph = tmp_path / "model.int8.onnx"
    ctx = SimpleNamespace(onnx_path=tmp_path / "model.onnx", precision="fp32")
    monkeypatch.setitem(step_registry._FUNCTIONS, DynamicInt8Config,
                        lambda ctx, config: StepOutput(onnx_path=graph, precision="int8", details={"n": 1}))
    assert run_step(ctx, DynamicInt8Config()) == {"n": 1}  # type: ignore[arg-type]
    assert (ctx.onnx_path, ctx.precision) == (graph, "int8")
    monkeypatch.setitem(step_registry._FUNCTIONS, DynamicInt8Config, lambda ctx, config: {"n": 2})
    with pytest.raises(StepContractError, match="step 'dynamic_int8' declares it provides an ONNX graph"):
        run_step(ctx, DynamicInt8Config())  # type: ignore[arg-type]
    assert ctx.onnx_path == graph  # nothing applied


def test_build_engine_without_tensorrt_exits_1_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]):
    from engineforge.build.cli import main

    _without_tensorrt(monkeypatch)
    data = write_eval_data(tmp_path / "eval.jsonl")
    out = tmp_path / "out"
    code = main([str(shell_checkpoint(tmp_path / "shell")), "--preset", "trt-fp16", "--eval-data", str(data),
                 "--output", str(out)])
    assert code == 1 and not out.exists()
    assert "build-engine: error: the compile step needs TensorRT" in capsys.readouterr().err
