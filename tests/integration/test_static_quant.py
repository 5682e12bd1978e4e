"""static_int8 end to end on tiny checkpoints: real calibration, quantize_static, ORT and OpenVINO sessions.

The stock tiny checkpoint predicts one class for every text (a random BERT is nearly constant), which
would make any agreement check pass. These tests briefly train it on the eval texts so predictions
differ per text, as in a fine-tuned model.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from engineforge.build.config import BuildConfig
from engineforge.build.report import BuildReport
from engineforge.build.runner import run_build
from engineforge.build.steps import ExportConfig, GraphOptimizeConfig, StaticInt8Config, ValidateConfig
from engineforge.errors import ConfigError, MissingPrerequisiteError
from tests.helpers.logits import file_logits
from tests.helpers.tiny_checkpoint import EVAL_TEXTS, TINY_LABELS, make_trained_tiny_checkpoint, write_eval_data


def _add_pooler_outlier(source: Path, target: Path) -> Path:
    """Same fp32 function, but one channel of the pooler's input is 1000x larger: the int8 range of that
    tensor then rounds every other channel to zero (BERT's outlier-feature problem), so quantizing the
    pooler breaks predictions while every other group quantizes fine."""
    import torch
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(source, target)
    model = AutoModelForSequenceClassification.from_pretrained(str(target)).eval()
    with torch.no_grad():
        norm = model.bert.encoder.layer[-1].output.LayerNorm
        norm.weight[0] *= 1000.0
        norm.bias[0] *= 1000.0
        model.bert.pooler.dense.weight[:, 0] /= 1000.0
    model.save_pretrained(str(target))
    return target


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("static")
    checkpoint = make_trained_tiny_checkpoint(root / "trained")
    calibration = root / "calibration.jsonl"  # texts only: calibration needs no labels
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in EVAL_TEXTS))
    return {"checkpoint": checkpoint, "eval": write_eval_data(root / "eval.jsonl", checkpoint),
            "calibration": calibration}


# For the tests of a quantized graph's structure (activation types, what stays fp32, other runtimes reading it):
# whether 12 eval texts of a tiny model keep every argmax under each such variant depends on the CPU's int8 kernels
# (one flip is 8.3 points; seen on one AMD EPYC and not another), and is what the budget tests check, not these.
STRUCTURE_ONLY = ValidateConfig(max_accuracy_drop=100.0, min_agreement=0.0)


def _build(checkpoint: Path, eval_data: Path | None, calibration: Path | None, out: Path, step: StaticInt8Config,
           validate: ValidateConfig | None = None, optimize: bool = False) -> BuildReport:
    steps = (ExportConfig(), *([GraphOptimizeConfig()] if optimize else []), step, validate or ValidateConfig())
    return run_build(BuildConfig(checkpoint=checkpoint, output_dir=out, steps=steps, eval_data=eval_data,
                                 calibration_data=calibration))


def _consumers_of_dequantized(model: onnx.ModelProto) -> dict[str, set[str]]:
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name: {i for i in n.input if i in dq_outputs} for n in model.graph.node}


def _quantized_outputs(model: onnx.ModelProto) -> list[str]:
    """MatMul/Gemm nodes whose output goes through a QuantizeLinear."""
    producers = {o: n for n in model.graph.node for o in n.output}
    return [producers[n.input[0]].name for n in model.graph.node if n.op_type == "QuantizeLinear"
            and n.input[0] in producers and producers[n.input[0]].op_type in ("MatMul", "Gemm")]


def test_static_int8_without_calibration_data_is_refused_before_any_work(trained, tmp_path):
    with pytest.raises(MissingPrerequisiteError, match=r"step 'static_int8' needs .*pass --calibration-data FILE"):
        _build(trained["checkpoint"], trained["eval"], None, tmp_path / "out", StaticInt8Config())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_each_calibration_method_gives_a_symmetric_int8_qdq_model_within_budget(trained, tmp_path, method):
    report = _build(trained["checkpoint"], trained["eval"], trained["calibration"], tmp_path / "out",
                    StaticInt8Config(calibration_method=method), optimize=method == "minmax")
    assert report.status == "ok" and report.precision == "int8-static-qdq"
    details = report.step("static_int8").details
    # Even after graph_optimize, the unfused export is what gets quantized.
    assert details["source"] == "model.fp32.onnx"
    assert details["quantize_linear"] > 0 and details["dequantize_linear"] > 0
    assert details["activation_types"] == ["INT8"] and details["symmetric_activations"]
    assert details["calibration_examples"] == len(EVAL_TEXTS) and details["calibration_seconds"] >= 0
    assert details["fallback"]["steps"][0]["action"] == "all quantized"

    path = tmp_path / "out" / "work" / "model.int8-static.onnx"
    model = onnx.load(str(path))
    assert {n.op_type for n in model.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert not _quantized_outputs(model), "inputs only by default (NNCF/TensorRT placement, faster in OpenVINO)"
    weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert weights, "per-channel int8 weights are stored as int8 initializers"
    int32 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT32}
    assert not [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int32], \
        "biases stay float: TensorRT's parser rejects int32 DequantizeLinear"

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(trained["checkpoint"]))
    logits = file_logits(path, tokenizer, list(EVAL_TEXTS))
    assert np.isfinite(logits).all()
    labels = [json.loads(line)["label"] for line in trained["eval"].read_text().splitlines()]
    assert len(set(labels)) > 1, "the eval set must not be one class, or agreement means nothing"
    agreement = np.mean([TINY_LABELS[i] == label for i, label in zip(logits.argmax(1), labels, strict=True)])
    assert agreement >= ValidateConfig().min_agreement
    assert report.validation["agreement"] >= ValidateConfig().min_agreement


def test_uint8_activations_are_asymmetric(trained, tmp_path):
    report = _build(trained["checkpoint"], trained["eval"], trained["calibration"], tmp_path / "out",
                    StaticInt8Config(activation_type="uint8", fallback=False, quantize_outputs=True), STRUCTURE_ONLY)
    details = report.steps[1].details
    assert _quantized_outputs(onnx.load(str(tmp_path / "out" / "work" / "model.int8-static.onnx")))
    assert details["activation_types"] == ["UINT8"] and not details["symmetric_activations"]
    assert details["tensorrt"].startswith("skipped: TensorRT rejects uint8")
    assert "fallback" not in details and report.precision == "int8-static-qdq-uint8act"


def test_keep_fp32_leaves_the_named_nodes_unquantized(trained, tmp_path):
    report = _build(trained["checkpoint"], trained["eval"], trained["calibration"], tmp_path / "out",
                    StaticInt8Config(keep_fp32=("*classifier*",), fallback=False), STRUCTURE_ONLY)
    details = report.steps[1].details
    assert details["keep_fp32"] == ["/model/classifier/Gemm"] == details["fp32_nodes"]
    model = onnx.load(str(tmp_path / "out" / "work" / "model.int8-static.onnx"))
    dequantized = _consumers_of_dequantized(model)
    classifier = next(n for n in model.graph.node if n.name == "/model/classifier/Gemm")
    assert dequantized[classifier.name] == set()
    weight = next(i for i in model.graph.initializer if i.name == classifier.input[1])
    assert weight.data_type == onnx.TensorProto.FLOAT
    assert dequantized["/model/bert/pooler/dense/Gemm"], "the other nodes are still quantized"

    with pytest.raises(ConfigError, match="matches no quantizable node"):
        _build(trained["checkpoint"], trained["eval"], trained["calibration"], tmp_path / "typo",
               StaticInt8Config(keep_fp32=("*clasifier*",)))


def test_fallback_finds_the_sensitive_group_first_and_keeps_it_fp32(trained, tmp_path):
    checkpoint = _add_pooler_outlier(trained["checkpoint"], tmp_path / "outlier")
    eval_data = write_eval_data(tmp_path / "eval.jsonl", checkpoint)
    report = _build(checkpoint, eval_data, trained["calibration"], tmp_path / "out", StaticInt8Config(),
                    ValidateConfig(min_agreement=1.0, max_accuracy_drop=0.0))
    decision = report.steps[1].details["fallback"]
    assert {k: decision["budget"][k] for k in ("max_accuracy_drop", "min_agreement")} == {"max_accuracy_drop": 0.0,
                                                                                  "min_agreement": 1.0}
    assert decision["eval_runtimes"][0] == "onnxruntime"  # and "openvino" where installed
    assert not decision["steps"][0]["within_budget"], "everything quantized must miss the budget here"
    assert decision["ranking"][0]["group"] == "pooler" and decision["ranking"][0]["flips"] > 0
    # The outlier's group first; at zero tolerance a CPU's int8 kernels may flip one more near-tie text, which a
    # second group then fixes (seen on one AMD EPYC): the budget is met either way, with the pooler kept fp32.
    assert decision["budget_met"] and decision["fp32_groups"][0] == "pooler" and len(decision["fp32_groups"]) <= 2
    assert decision["steps"][decision["chosen_step"]]["within_budget"]
    assert report.steps[1].details["fp32_nodes"][0] == "/model/bert/pooler/dense/Gemm"
    assert report.validation["agreement"] == 1.0
    model = onnx.load(str(tmp_path / "out" / "work" / "model.int8-static.onnx"))
    assert _consumers_of_dequantized(model)["/model/bert/pooler/dense/Gemm"] == set()


def test_fallback_judges_against_the_original_model_and_skips_when_its_input_already_misses(trained, tmp_path):
    from engineforge.build.steps import PruneConfig
    from engineforge.errors import AccuracyBudgetExceeded

    # Pruning 90 % without recovery: the fp32 student already disagrees with the original model.
    steps = (PruneConfig(head_sparsity=0.9, ffn_sparsity=0.9, num_batches=1), ExportConfig(), StaticInt8Config(),
             ValidateConfig(min_agreement=1.0, max_accuracy_drop=0.0))
    with pytest.raises(AccuracyBudgetExceeded) as failed:
        run_build(BuildConfig(checkpoint=trained["checkpoint"], output_dir=tmp_path / "out", steps=steps,
                              eval_data=trained["eval"], calibration_data=trained["calibration"]))
    decision = failed.value.report.step("static_int8").details["fallback"]  # type: ignore[attr-defined]
    assert decision["fp32_input"]["flips"] > 0 and not decision["budget_met"]
    assert decision["stop_reason"].startswith("the fp32 input is already outside the budget")
    assert "steps" not in decision, "no sensitivity passes are spent on a hopeless input"


def test_the_static_int8_file_runs_in_openvino_like_in_onnxruntime(trained, tmp_path):
    ov = pytest.importorskip("openvino")
    report = _build(trained["checkpoint"], trained["eval"], trained["calibration"], tmp_path / "out",
                    StaticInt8Config(fallback=False), STRUCTURE_ONLY)
    assert report.steps[1].details["openvino"].startswith("ok")
    path = tmp_path / "out" / "work" / "model.int8-static.onnx"
    from transformers import AutoTokenizer

    from engineforge.engines import encode

    tokenizer = AutoTokenizer.from_pretrained(str(trained["checkpoint"]))
    feeds = encode(tokenizer, list(EVAL_TEXTS), 128, ["input_ids", "attention_mask", "token_type_ids"])
    compiled = ov.Core().compile_model(ov.Core().read_model(str(path)), "CPU", {"INFERENCE_NUM_THREADS": 1})
    ov_logits = np.asarray(compiled(feeds)[compiled.output(0)])
    ort = file_logits(path, tokenizer, list(EVAL_TEXTS))
    np.testing.assert_array_equal(ov_logits.argmax(1), ort.argmax(1))
    assert np.abs(ov_logits - ort).max() < 0.1 * np.abs(ort).max()


@pytest.mark.tensorrt
def test_the_symmetric_int8_file_parses_in_tensorrt(trained, tmp_path):
    if not any(importlib.util.find_spec(name) for name in ("tensorrt", "tensorrt_rtx")):
        pytest.skip("needs tensorrt or tensorrt-rtx (pip install 'engineforge[tensorrt]')")
    report = _build(trained["checkpoint"], trained["eval"], trained["calibration"], tmp_path / "out",
                    StaticInt8Config(fallback=False), STRUCTURE_ONLY)
    assert report.steps[1].details["tensorrt"].startswith("ok: parsed by tensorrt")
