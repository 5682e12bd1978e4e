"""select_runtime: every CPU runtime is tried on the real engine, the fastest one within budget is kept."""

from __future__ import annotations

import pytest

from engineforge.build.config import BuildConfig
from engineforge.build.runner import run_build
from engineforge.build.steps import (
    DynamicInt8Config,
    ExportConfig,
    GraphOptimizeConfig,
    SelectRuntimeConfig,
    ValidateConfig,
)
from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import ConfigError


def _build(checkpoint, eval_data, out, *steps):
    return run_build(BuildConfig(checkpoint=checkpoint, output_dir=out, eval_data=eval_data,
                                 steps=(ExportConfig(), GraphOptimizeConfig(), *steps,
                                        SelectRuntimeConfig(iterations=5), ValidateConfig())))


def test_fp32_engine_runs_in_both_runtimes_and_the_faster_is_published(tiny_checkpoint, tiny_eval_data, tmp_path):
    report = _build(tiny_checkpoint, tiny_eval_data, tmp_path / "out")
    select = report.step("select_runtime").details
    rows = {r["runtime"]: r for r in select["candidates"]}
    assert rows["onnxruntime"]["status"] == rows["openvino"]["status"] == "ok"
    # Ranked on the build's traffic profile (ms per request), 1x128 kept beside it as a reference.
    fastest = min(rows.values(), key=lambda r: r["profile_ms_per_request"])["runtime"]
    assert select["ranked_on"] == "profile_ms_per_request" and all(r["median_ms_1x128"] > 0 for r in rows.values())
    assert select["chosen"] == fastest
    assert EngineSpec.load(tmp_path / "out" / "engine").runtime == fastest
    # Validation ran in the chosen runtime.
    assert report.step("validate").details["runtime"] == fastest


def test_runtime_that_cannot_load_the_graph_is_skipped_with_its_reason(tiny_checkpoint, tiny_eval_data, tmp_path):
    report = _build(tiny_checkpoint, tiny_eval_data, tmp_path / "out", DynamicInt8Config())
    select = report.step("select_runtime").details
    rows = {r["runtime"]: r for r in select["candidates"]}
    assert rows["openvino"]["status"] == "cannot run" and "QAttention" in rows["openvino"]["reason"]
    assert select["chosen"] == "onnxruntime"


def test_unknown_runtime_is_refused():
    with pytest.raises(ConfigError, match="choose from"):
        SelectRuntimeConfig(candidates=("tensorrt-cpu",))


def test_the_dynamic_int8_graph_is_one_more_candidate_and_the_bundle_ships_the_chosen_graph(
        tiny_checkpoint, tiny_eval_data, tmp_path):
    """fast-cpu's rungs time the plain export quantized by ONNX Runtime's dynamic int8 beside the static Q/DQ graph
    in every runtime: which int8 graph is faster depends on the CPU. Whichever wins, the bundle ships that graph."""
    import onnx

    from engineforge.build.steps import StaticInt8Config
    from engineforge.build.steps.select_runtime import DYNAMIC

    out = tmp_path / "out"
    report = run_build(BuildConfig(checkpoint=tiny_checkpoint, output_dir=out, eval_data=tiny_eval_data,
                                   calibration_data=tiny_eval_data,
                                   steps=(ExportConfig(), StaticInt8Config(),
                                          SelectRuntimeConfig(iterations=5, dynamic_int8=True), ValidateConfig())))
    select = report.step("select_runtime").details
    rows = {r.get("candidate", r["runtime"]): r for r in select["candidates"]}
    assert set(rows) == {"onnxruntime", "openvino", DYNAMIC}
    assert rows[DYNAMIC]["status"] == "ok" and rows[DYNAMIC]["profile_ms_per_request"] > 0
    fastest = min(rows, key=lambda name: rows[name]["profile_ms_per_request"])
    assert select["chosen"] == fastest
    spec = EngineSpec.load(out / "engine")
    ops = {node.op_type for node in onnx.load(str(out / "engine" / spec.model_file)).graph.node}
    if fastest == DYNAMIC:
        assert spec.runtime == "onnxruntime" and spec.precision == "int8-dynamic-per-channel"
        assert "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
    else:
        assert spec.runtime == fastest and spec.precision == "int8-static-qdq" and "QuantizeLinear" in ops


def test_fast_cpu_rungs_time_the_dynamic_int8_graph_too():
    from engineforge.build.presets import preset_candidates

    for _, steps in preset_candidates("fast-cpu"):
        assert next(s for s in steps if s.step_type == "select_runtime").dynamic_int8
    assert not next(s for s in preset_candidates("int8-static")[0][1] if s.step_type == "select_runtime").dynamic_int8


def _add_ffn_outlier(source, target):
    """One FFN neuron of layer 0 made 1000x larger (and its output column 1000x smaller): the dynamic int8 scale of
    `output.dense`'s input is then set by that neuron and rounds every other one to zero, so quantizing layer 0
    breaks predictions while the other layers quantize fine (the outlier-feature problem of real BERTs)."""
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(source, target)
    model = AutoModelForSequenceClassification.from_pretrained(str(target)).eval()
    with torch.no_grad():
        layer = model.bert.encoder.layer[0]
        layer.intermediate.dense.weight[0] *= 1000.0
        layer.intermediate.dense.bias[0] = 1000.0  # always active, whatever the token
        layer.output.dense.weight[:, 0] /= 1000.0
    model.save_pretrained(str(target))
    return target


def test_the_dynamic_int8_candidate_keeps_its_most_sensitive_layer_fp32_to_stay_within_budget(tmp_path):
    """A dynamic-int8 graph that misses the budget by a few flips is not dropped: the layers whose quantization
    costs most go back to fp32 (fewest first) until it fits, and timing decides whether it still wins."""
    import onnx

    from engineforge.build.steps.select_runtime import DYNAMIC
    from tests.helpers.tiny_checkpoint import make_trained_tiny_checkpoint, write_eval_data

    checkpoint = _add_ffn_outlier(make_trained_tiny_checkpoint(tmp_path / "trained"), tmp_path / "outlier")
    eval_data = write_eval_data(tmp_path / "eval.jsonl", checkpoint)
    report = run_build(BuildConfig(
        checkpoint=checkpoint, output_dir=tmp_path / "out", eval_data=eval_data,
        steps=(ExportConfig(), SelectRuntimeConfig(candidates=("onnxruntime",), iterations=5, dynamic_int8=True),
               ValidateConfig(min_agreement=1.0, max_accuracy_drop=0.0))))
    row = next(r for r in report.step("select_runtime").details["candidates"] if r.get("candidate") == DYNAMIC)
    steps = row["fallback_steps"]
    assert steps[0]["action"] == "all quantized" and not steps[0]["within_budget"], "the outlier must break it"
    assert row["status"] == "ok" and row["flips"] == 0
    assert row["fp32_layers"][0] == "layer.0" and len(row["fp32_layers"]) <= 2
    graph = onnx.load(str(tmp_path / "out" / "work" / row["graph"]))
    integer = {n.name for n in graph.graph.node if n.op_type == "MatMulInteger"}
    kept = {n.name for n in graph.graph.node if n.op_type == "MatMul" and "layer.0/" in n.name}
    assert integer and not any("layer.0/" in name for name in integer) and kept
