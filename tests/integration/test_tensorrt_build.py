"""TensorRT builds for real: presets trt-fp16 and trt-int8 on a tiny checkpoint, the plan, its metadata, both
published forms, validation without a GPU, and the clear errors for broken plans and unparsable graphs.

Building needs only a TensorRT flavour (TensorRT-RTX builds without a GPU); running the engine needs a GPU
(tests marked `gpu`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2

from engineforge.build.cli import main as build_engine
from engineforge.build.report import BuildReport
from engineforge.build.steps.compile.tensorrt_compile import parse_onnx
from engineforge.engines import engine_logits, load_engine
from engineforge.engines.engine_spec import EngineSpec
from engineforge.engines.tensorrt_api import current_gpu, find_tensorrt
from engineforge.engines.tensorrt_engine import NoGpuError, sha256_file
from engineforge.errors import CompileError, EngineLoadError
from tests.helpers.tiny_checkpoint import EVAL_TEXTS, make_trained_tiny_checkpoint, write_eval_data

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trt")
    checkpoint = make_trained_tiny_checkpoint(root / "ckpt")
    texts = root / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in EVAL_TEXTS))
    return {"root": root, "checkpoint": checkpoint, "eval": write_eval_data(root / "eval.jsonl", checkpoint),
            "texts": texts}


def _build(data: dict[str, Path], preset: str, *extra: str) -> tuple[int, Path]:
    out = data["root"] / f"out-{preset}"
    code = build_engine([str(data["checkpoint"]), "--preset", preset, "--eval-data", str(data["eval"]),
                         "--train-data", str(data["texts"]), "--calibration-data", str(data["texts"]),
                         "-o", str(out), "--repo", str(data["root"] / "repo"), "--model-name", preset, "--overwrite",
                         *extra])
    return code, out


@pytest.fixture(scope="module")
def fp16_build(data: dict[str, Path]) -> Path:
    code, out = _build(data, "trt-fp16")
    assert code == 0
    return out


def test_fp16_build_writes_plan_metadata_and_report(fp16_build: Path, data: dict[str, Path]):
    report = BuildReport.load(fp16_build)
    compile_step = report.step("compile")
    assert report.status == "ok" and report.runtime == "tensorrt" and compile_step is not None
    details = compile_step.details
    assert details["flavour"] == find_tensorrt().flavour and details["precision"] == "fp16"
    assert details["onnx_given"] == "model.fp16.onnx" and details["fp16_graph"]["kept_fp32_ops"]["Softmax"] == 2
    declared = details["layer_precisions"]
    assert set(declared["matrix_multiplies_by_input_type"]) == {"HALF"}  # every matmul in fp16 ...
    assert declared["compute_layers_by_output_type"]["FLOAT"] > 0  # ... LayerNorm/Softmax kept fp32
    assert details["profile"] == {"min": [1, 1], "opt": [8, 128], "max": [32, 128]}  # publish's max batch

    spec = EngineSpec.load(fp16_build / "engine")
    plan = fp16_build / "engine" / spec.model_file
    meta = spec.tensorrt
    assert spec.runtime == "tensorrt" and spec.model_file == "model.plan"
    assert meta["plan_sha256"] == sha256_file(plan) and meta["plan_bytes"] == plan.stat().st_size
    assert meta["onnx_sha256"] == sha256_file(fp16_build / "work" / "tensorrt" / "model.fp16.onnx")
    assert [t["name"] for t in meta["inputs"]] == list(spec.input_names)
    assert meta["outputs"][0]["name"] == "logits" and meta["gpu_architectures"]
    inspected = details["engine_inspector"]  # the plan opened by the TensorRT runtime's loader, as served
    if current_gpu() is None:
        assert report.validation["engine_executed"].startswith("engine not executed: no GPU")
        assert inspected.startswith("engine inspector not run: deserializing an engine needs a GPU")
    else:
        assert inspected["layers"] > 0
        assert "engine not executed: no GPU" in (fp16_build / "build_report.md").read_text()


def test_fp16_build_publishes_the_ensemble_and_a_native_plan_model(fp16_build: Path, data: dict[str, Path]):
    repo, native = data["root"] / "repo", data["root"] / "repo-tensorrt"

    def parse(path: Path) -> model_config_pb2.ModelConfig:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())

    engine = parse(repo / "trt-fp16.v1.engine" / "config.pbtxt")
    assert engine.backend == "python" and engine.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (repo / "trt-fp16.v1.engine" / "1" / "model.plan").is_file()
    assert parse(repo / "trt-fp16" / "config.pbtxt").platform == "ensemble"
    plan = parse(native / "trt-fp16_plan" / "config.pbtxt")
    assert plan.platform == "tensorrt_plan" and plan.default_model_filename == "model.plan"
    assert plan.max_batch_size == 32 and plan.dynamic_batching is not None
    assert [(i.name, i.data_type) for i in plan.input] == [
        (n, model_config_pb2.TYPE_INT64) for n in ("input_ids", "attention_mask", "token_type_ids")]
    assert plan.output[0].name == "logits" and list(plan.output[0].dims) == [3]
    assert plan.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(plan.instance_group[0].profile) == ["0"]
    version = native / "trt-fp16_plan" / "1"
    assert (version / "model.plan").read_bytes() == (fp16_build / "engine" / "model.plan").read_bytes()
    assert EngineSpec.load(version).tensorrt["plan_sha256"] == sha256_file(version / "model.plan")


def test_int8_preset_compiles_a_pruned_qdq_engine(data: dict[str, Path]):
    code, out = _build(data, "trt-int8", "--no-publish")
    assert code == 0
    report = BuildReport.load(out)
    names = [s.name for s in report.steps]
    assert names[-2:] == ["compile", "validate"] and "static_int8" in names and report.candidates
    details = report.step("compile").details
    assert details["precision"] == "int8" and details["qdq"]["symmetric_activations"]
    assert details["layer_precisions"]["matrix_multiplies_by_input_type"].get("INT8", 0) > 0
    assert EngineSpec.load(out / "engine").tensorrt["precision"] == "int8"


def _copy_engine(fp16_build: Path, target: Path) -> Path:
    shutil.copytree(fp16_build / "engine", target)
    return target / "model.plan"


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_plan_is_refused_naming_the_file(fp16_build: Path, tmp_path: Path, damage: str):
    plan = _copy_engine(fp16_build, tmp_path / "engine")
    raw = bytearray(plan.read_bytes())
    if damage == "truncated":
        del raw[len(raw) // 2:]
    else:
        raw[len(raw) // 2] ^= 0xFF
    plan.write_bytes(bytes(raw))
    with pytest.raises(EngineLoadError, match=rf"{plan}: corrupt or truncated TensorRT plan") as caught:
        load_engine(plan, "tensorrt", 1)
    assert not isinstance(caught.value, NoGpuError)


def test_a_plan_from_another_tensorrt_version_names_both(fp16_build: Path, tmp_path: Path):
    plan = _copy_engine(fp16_build, tmp_path / "engine")
    spec = json.loads((plan.parent / "engine.json").read_text())
    spec["tensorrt"]["version"] = "0.9.0.1"
    (plan.parent / "engine.json").write_text(json.dumps(spec))
    installed = find_tensorrt()
    with pytest.raises(EngineLoadError, match=rf"{plan}: built by {installed.flavour} 0.9.0.1, but this machine "
                                              rf"has {installed.flavour} {installed.version}"):
        load_engine(plan, "tensorrt", 1)


def test_an_onnx_op_tensorrt_cannot_parse_is_named(tmp_path: Path):
    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery_0", domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.example", 1)]), str(path))
    with pytest.raises(CompileError, match=rf"{path}: the ONNX parser of .* rejects 1 node\(s\): node 0 "
                                           r"'mystery_0' \(NoSuchOp\)"):
        parse_onnx(find_tensorrt(), path)


@pytest.mark.gpu
def test_the_engine_runs_on_the_gpu_like_its_onnx(fp16_build: Path):
    from transformers import AutoTokenizer

    spec = EngineSpec.load(fp16_build / "engine")
    tokenizer = AutoTokenizer.from_pretrained(str(fp16_build / "engine" / "tokenizer"))
    engine = load_engine(fp16_build / "engine" / "model.plan", "tensorrt", 1)
    onnx_engine = load_engine(fp16_build / "work" / "tensorrt" / "model.fp16.onnx", "onnxruntime", 2)
    texts = list(EVAL_TEXTS)
    gpu = engine_logits(engine, tokenizer, texts, spec.max_sequence_length, 8)
    cpu = engine_logits(onnx_engine, tokenizer, texts, spec.max_sequence_length, 8)
    np.testing.assert_allclose(gpu, cpu, atol=2e-2)
    assert engine.settings()["gpu"]
