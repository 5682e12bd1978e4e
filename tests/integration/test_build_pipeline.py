"""build-engine end to end on tiny checkpoints: real export, ORT optimizer, quantizer and ORT sessions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engineforge.build.cli import main as build_engine
from engineforge.build.config import BuildConfig
from engineforge.build.presets import load_recipe, preset_steps
from engineforge.build.report import BuildReport
from engineforge.build.runner import run_build
from engineforge.engines import engine_logits, load_engine
from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import AccuracyBudgetExceeded, CheckpointError, UnsupportedArchitectureError
from tests.helpers.tiny_checkpoint import TINY_LABELS, make_tiny_checkpoint, write_eval_data


def _build(checkpoint: Path, eval_data: Path, out: Path, preset: str = "int8", **settings: object) -> BuildReport:
    steps = tuple(s for s in preset_steps(preset) if s.step_type != "publish")
    return run_build(BuildConfig(checkpoint=checkpoint, output_dir=out, steps=steps, eval_data=eval_data,
                                 **settings))  # type: ignore[arg-type]


def test_int8_build_writes_a_servable_bundle_and_reports(tiny_checkpoint, tiny_eval_data, tmp_path):
    report = _build(tiny_checkpoint, tiny_eval_data, tmp_path / "out", max_build_minutes=60.0)
    assert report.status == "ok"
    assert [s.name for s in report.steps] == ["export", "graph_optimize", "dynamic_int8", "plan_serving",
                                              "validate"]
    optimize = report.steps[1].details
    assert optimize["missing_fusions"] == [] and optimize["fused_ops"]["Attention"] == 2
    assert report.steps[2].details["quantized_nodes"] > 0
    assert report.validation["agreement"] >= 0.98

    bundle = tmp_path / "out" / "engine"
    spec = EngineSpec.load(bundle)
    assert spec.labels == TINY_LABELS and spec.precision.startswith("int8")
    assert (bundle / "tokenizer" / "tokenizer.json").is_file()
    # The bundle's model is the validated int8 file, not the fp32 export.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))
    texts = [json.loads(line)["text"] for line in tiny_eval_data.read_text().splitlines()]
    served = engine_logits(load_engine(bundle / "model.onnx", "onnxruntime", 1), tokenizer, texts, 128)
    built = engine_logits(load_engine(tmp_path / "out" / "work" / "model.int8.onnx", "onnxruntime", 1), tokenizer,
                          texts, 128)
    np.testing.assert_array_equal(served, built)

    on_disk = BuildReport.load(tmp_path / "out")
    assert on_disk.validation["examples"] == len(texts) and on_disk.to_dict() == report.to_dict()
    assert "## Accuracy" in (tmp_path / "out" / "build_report.md").read_text()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["checkpoint"]["sha256"]["model.safetensors"] == report.checkpoint["weights_sha256"]
    assert set(manifest["outputs"]) >= {"model.onnx", "engine.json", "tokenizer/tokenizer.json"}
    assert manifest["data"]["eval"]["sha256"] and manifest["versions"]["onnxruntime"]
    recipe = load_recipe(tmp_path / "out" / "recipe.toml")
    assert [s.step_type for s in recipe["steps"]] == ["export", "graph_optimize", "dynamic_int8", "plan_serving",
                                                      "validate"]
    assert recipe["max_build_minutes"] == 60.0  # the recipe repeats the build with its time limit


def test_fp32_preset_matches_pytorch_closely(tiny_checkpoint, tiny_eval_data, tmp_path):
    report = _build(tiny_checkpoint, tiny_eval_data, tmp_path / "out", preset="fp32")
    assert report.validation["agreement"] == 1.0
    assert report.validation["max_abs_logit_diff"] < 1e-4


def test_budget_failure_is_clear_and_keeps_only_its_log(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "near-tie", near_tie=True)
    eval_data = write_eval_data(tmp_path / "eval.jsonl", checkpoint)
    log = tmp_path / "out" / "build.log"
    with pytest.raises(AccuracyBudgetExceeded, match=r"outside the accuracy budget.*Worst output difference.*\(log: "
                       + str(log)) as failed:
        _build(checkpoint, eval_data, tmp_path / "out")
    report = failed.value.report  # type: ignore[attr-defined]
    assert report.status == "failed" and "AccuracyBudgetExceeded" in report.error
    assert report.validation["agreement"] < 0.98
    # no half-built engine, recipe, manifest or report that looks like a build: the log, with the report at its end
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["build.log"]
    assert "AccuracyBudgetExceeded" in log.read_text() and "agreement" in log.read_text()


def test_missing_checkpoint_exits_with_a_clear_message(tmp_path, tiny_eval_data, capsys, monkeypatch):
    code = build_engine([str(tmp_path / "nope"), "--eval-data", str(tiny_eval_data), "-o", str(tmp_path / "out")])
    assert code == 1  # the build ran and failed; 2 is for a wrong command line
    err = capsys.readouterr().err
    assert "build-engine: error: checkpoint directory" in err and "does not exist" in err
    # The checkpoint is what a user fixes first: said before any complaint about the command line's data...
    assert build_engine([str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    # ...and a directory that is no checkpoint is named as such, not as an output directory problem.
    monkeypatch.chdir(tmp_path)
    assert build_engine([str(tmp_path), "--eval-data", str(tiny_eval_data)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path} is not a Hugging Face checkpoint: it has no config.json" in err and "overwrite" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "artifacts").exists()  # refused: nothing written


def test_impossible_command_lines_are_usage_errors(tiny_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert build_engine([str(tiny_checkpoint), "-o", out]) == 2  # int8 validates: it needs eval data
    assert "'validate' needs labelled eval data: pass --eval-data" in capsys.readouterr().err
    assert build_engine([str(tiny_checkpoint), "--preset", "int8", "--recipe", "r.toml"]) == 2
    assert build_engine([str(tiny_checkpoint), "--preset", "turbo"]) == 2
    assert "unknown preset 'turbo'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_corrupt_weights_are_reported(tiny_checkpoint, tiny_eval_data, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"could not load weights from .*model\.safetensors.*\(log: "):
        _build(broken, tiny_eval_data, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["build.log"]  # loading weights is work: its log


def test_corrupt_config_is_reported(tiny_checkpoint, tiny_eval_data, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        _build(broken, tiny_eval_data, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any work: nothing written


@pytest.mark.parametrize(("model_type", "architecture", "fragment"), [
    ("gpt2", "GPT2ForSequenceClassification", "model_type 'gpt2'"),
    ("bert", "BertForMaskedLM", "neither a sequence or token classifier nor a bare encoder; supported tasks: "
                                "text-classification"),
    ("bert", "BertForQuestionAnswering", r"supported tasks: .*token-classification \(\*ForTokenClassification\)"),
])
def test_unsupported_architectures_are_refused(tiny_checkpoint, tiny_eval_data, tmp_path, model_type, architecture,
                                               fragment):
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    config = json.loads((other / "config.json").read_text())
    config.update(model_type=model_type, architectures=[architecture])
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitectureError, match=fragment):
        _build(other, tiny_eval_data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_eval_labels_unknown_to_the_model_are_refused(tiny_checkpoint, tmp_path, capsys):
    data = tmp_path / "eval.jsonl"
    data.write_text('{"text": "hi", "label": "weather"}\n')
    code = build_engine([str(tiny_checkpoint), "--eval-data", str(data), "-o", str(tmp_path / "out"), "--no-publish"])
    assert code == 1
    assert "labels ['weather'] that the model does not know" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # data is checked before any work


def test_a_library_failure_inside_a_step_is_a_typed_error_naming_the_step(tiny_checkpoint, tiny_eval_data,
                                                                           tmp_path, monkeypatch):
    from engineforge.build import step_registry
    from engineforge.build.steps import GraphOptimizeConfig
    from engineforge.errors import StepFailedError

    def broken(ctx, config):
        raise IndexError("indices element out of data bounds")

    monkeypatch.setitem(step_registry._FUNCTIONS, GraphOptimizeConfig, broken)
    with pytest.raises(StepFailedError, match=r"step 2/5 graph_optimize failed: IndexError: indices element out of "
                                              r"data bounds\. The step's options are .* Try another preset"):
        _build(tiny_checkpoint, tiny_eval_data, tmp_path / "out")
    assert "StepFailedError: step 2/5 graph_optimize failed" in (tmp_path / "out" / "build.log").read_text()


def test_third_party_warnings_go_to_the_build_log_not_the_console(tiny_checkpoint, tiny_eval_data, tmp_path,
                                                                  monkeypatch, capsys):
    import logging
    import warnings

    from engineforge.build import step_registry
    from engineforge.build.steps import DynamicInt8Config

    real = step_registry._FUNCTIONS[DynamicInt8Config]

    def noisy(ctx, config):  # what ONNX Runtime's quantizer and torch do inside a step
        logging.warning("Please consider pre-processing before quantization")
        logging.getLogger("onnxruntime.quantization").warning("third-party record")
        warnings.warn("a library deprecation", DeprecationWarning, stacklevel=1)
        return real(ctx, config)

    monkeypatch.setitem(step_registry._FUNCTIONS, DynamicInt8Config, noisy)
    report = _build(tiny_checkpoint, tiny_eval_data, tmp_path / "out")
    assert report.status == "ok"
    err = capsys.readouterr().err
    assert "pre-processing" not in err and "third-party record" not in err and "deprecation" not in err
    assert "[engineforge] step 3/5 dynamic_int8 done" in err  # the project's own lines stay
    log = (tmp_path / "out" / "build.log").read_text()
    assert "Please consider pre-processing" in log and "third-party record" in log and "a library deprecation" in log
    assert "step 3/5 dynamic_int8 done" in log
