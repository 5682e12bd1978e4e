"""The compile step's config, its place among the steps, and the native Triton config it leads to (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from engineforge.build.config import BuildConfig
from engineforge.build.pipeline import check_build
from engineforge.build.presets import preset_candidates, preset_steps
from engineforge.build.steps import (
    CompileConfig,
    DynamicInt8Config,
    ExportConfig,
    GraphOptimizeConfig,
    PublishConfig,
    StaticInt8Config,
    ValidateConfig,
)
from engineforge.engines.engine_spec import EngineSpec
from engineforge.engines.tensorrt_engine import TensorRTMetadata
from engineforge.errors import ConfigError, EngineLoadError, MissingPrerequisiteError
from engineforge.serve.native_plan import build_plan_config

LABELS = ("a", "b", "c")


def _build(tmp_path: Path, *steps, max_seq: int = 128) -> BuildConfig:
    return BuildConfig(checkpoint=tmp_path / "ckpt", output_dir=tmp_path / "out", steps=steps,
                       eval_data=tmp_path / "e.jsonl", calibration_data=tmp_path / "c.jsonl",
                       train_data=tmp_path / "t.jsonl", max_sequence_length=max_seq)


@pytest.mark.parametrize(("values", "message"), [
    ({"target": "tvm"}, r"compile.target='tvm': choose one of \['tensorrt'\]"),
    ({"precision": "int4"}, r"compile.precision='int4': choose one of \['fp16', 'int8', 'fp32'\]"),
    ({"max_shape": [32]}, r"compile.max_shape=\[32\]: give \[batch, sequence\]"),
    ({"opt_shape": [0, 8]}, r"compile.opt_shape=\[0, 8\]"),
    ({"optimization_level": 9}, r"optimization_level=9: use 0..5"),
])
def test_invalid_settings_name_the_fix(values, message):
    with pytest.raises(ConfigError, match=message):
        CompileConfig(**values)


def test_the_profile_follows_the_build(tmp_path):
    steps = (ExportConfig(), CompileConfig(), ValidateConfig(), PublishConfig(max_batch_size=16))
    build = _build(tmp_path, *steps, max_seq=64)
    profile = steps[1].profile(build)
    assert (profile.min, profile.opt, profile.max) == ((1, 1), (8, 64), (16, 64))
    explicit = CompileConfig(min_shape=[2, 8], opt_shape=[4, 32], max_shape=[64, 256])
    assert explicit.profile(build).to_dict() == {"min": [2, 8], "opt": [4, 32], "max": [64, 256]}


@pytest.mark.parametrize(("steps", "message"), [
    ((ExportConfig(), CompileConfig(max_shape=[8, 128]), PublishConfig(max_batch_size=32)),
     r"max_shape batch 8 is below publish.max_batch_size 32"),
    ((ExportConfig(), CompileConfig(max_shape=[32, 64])), r"max_shape sequence 64 is below max_sequence_length 128"),
    ((ExportConfig(), CompileConfig(min_shape=[4, 4], opt_shape=[2, 64])), r"must grow min <= opt <= max"),
    ((ExportConfig(), StaticInt8Config(), CompileConfig(precision="fp16")),
     r"after static_int8: .*precision = \"int8\""),
    ((ExportConfig(), StaticInt8Config(activation_type="uint8"), CompileConfig(precision="int8")),
     r"TensorRT rejects uint8 Q/DQ activations"),
])
def test_contradictions_with_the_rest_of_the_build_are_refused_up_front(tmp_path, steps, message):
    with pytest.raises(ConfigError, match=message):
        check_build(_build(tmp_path, *steps))


@pytest.mark.parametrize(("steps", "message"), [
    ((CompileConfig(),), r"'compile' needs an ONNX graph of standard ONNX ops.*add 'export'"),
    ((ExportConfig(), GraphOptimizeConfig(), CompileConfig()),
     r"'compile' needs an ONNX graph of standard ONNX ops .* but 'graph_optimize' before it fused the graph"),
    ((ExportConfig(), DynamicInt8Config(), CompileConfig()), r"but 'dynamic_int8' before it quantized"),
    ((ExportConfig(), CompileConfig(precision="int8")), r"'compile' needs a Q/DQ int8 ONNX graph.*'static_int8'"),
])
def test_missing_prerequisites_are_refused_before_work(tmp_path, steps, message):
    with pytest.raises(MissingPrerequisiteError, match=message):
        check_build(_build(tmp_path, *steps))


def test_static_int8_after_fusion_gives_compile_a_portable_graph_again(tmp_path):
    check_build(_build(tmp_path, ExportConfig(), GraphOptimizeConfig(), StaticInt8Config(),
                       CompileConfig(precision="int8"), ValidateConfig()))


def test_trt_presets_are_valid_builds(tmp_path):
    fp16 = preset_steps("trt-fp16")
    assert [s.step_type for s in fp16] == ["export", "compile", "validate", "publish"]
    check_build(_build(tmp_path, *fp16))
    ladder = preset_candidates("trt-int8")
    assert len(ladder) == 4 and ladder[-1][0] == "no pruning, static int8"
    for _, steps in ladder:
        assert [s.step_type for s in steps][-4:] == ["static_int8", "compile", "validate", "publish"]
        check_build(_build(tmp_path, *steps))


def _metadata(**changes) -> TensorRTMetadata:
    profile = {"min": [1, 1], "opt": [8, 128], "max": [32, 128]}
    names = ("input_ids", "attention_mask")
    values = dict(flavour="tensorrt", version="11.4.0.106", gpu_architectures=("SM90",), built_on="H200 (SM90)",
                  precision="fp16", profiles=({n: profile for n in names},),
                  inputs=tuple({"name": n, "dtype": "INT64", "shape": [-1, -1]} for n in names),
                  outputs=({"name": "logits", "dtype": "FLOAT", "shape": [-1, 3]},), onnx_sha256="0" * 64,
                  plan_sha256="1" * 64, plan_bytes=10)
    return TensorRTMetadata(**(values | changes))


def test_metadata_round_trips_and_incomplete_metadata_is_an_error():
    meta = _metadata()
    assert TensorRTMetadata.from_dict(meta.to_dict(), "x") == meta and meta.max_batch_size == 32
    broken = meta.to_dict()
    del broken["plan_sha256"]
    with pytest.raises(EngineLoadError, match="x: TensorRT metadata is incomplete"):
        TensorRTMetadata.from_dict(broken, "x")


def test_native_plan_config_reparses_in_triton_and_fits_the_profile():
    spec = EngineSpec(labels=LABELS, runtime="tensorrt", model_file="model.plan", build_id="b1",
                      input_names=("input_ids", "attention_mask"), tensorrt=_metadata().to_dict())
    config = build_plan_config("clf", spec, max_batch_size=32, max_queue_delay_us=100)
    parsed = text_format.Parse(config.to_pbtxt(), model_config_pb2.ModelConfig())
    assert parsed.name == "clf_plan" and parsed.platform == "tensorrt_plan"
    assert parsed.default_model_filename == "model.plan" and parsed.max_batch_size == 32
    assert [(i.name, list(i.dims)) for i in parsed.input] == [("input_ids", [-1]), ("attention_mask", [-1])]
    assert parsed.output[0].data_type == model_config_pb2.TYPE_FP32 and list(parsed.output[0].dims) == [3]
    assert parsed.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 100
    assert parsed.parameters["tensorrt"].string_value == "tensorrt 11.4.0.106"
    with pytest.raises(ConfigError, match="max_batch_size 64 exceeds the engine profile's max batch 32"):
        build_plan_config("clf", spec, max_batch_size=64, max_queue_delay_us=0)


def test_a_gpu_the_plan_was_not_built_for_is_named_with_its_targets(monkeypatch, tmp_path):
    from engineforge.engines import tensorrt_engine

    plan = tmp_path / "model.plan"
    meta = _metadata(flavour="tensorrt-rtx", version="1.7.1.116", gpu_architectures=("SM86", "SM89"))
    monkeypatch.setattr(tensorrt_engine, "current_gpu", lambda: ("NVIDIA H200", "SM90"))
    with pytest.raises(EngineLoadError, match=rf"{plan}: built for SM86, SM89 by tensorrt-rtx 1.7.1.116, but this "
                                              r"GPU is NVIDIA H200 \(SM90\)"):
        tensorrt_engine.check_gpu(plan, meta)
    assert tensorrt_engine.check_gpu(plan, _metadata(gpu_architectures=("SM90",))) == "NVIDIA H200 (SM90)"
    monkeypatch.setattr(tensorrt_engine, "current_gpu", lambda: None)
    with pytest.raises(tensorrt_engine.NoGpuError, match="needs an NVIDIA GPU"):
        tensorrt_engine.check_gpu(plan, meta)
