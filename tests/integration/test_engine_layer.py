"""One engine layer: the same engine file opened for build timing/validation, for the served model and for the
benchmark gets identical runtime settings and identical outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from engineforge.build.checkpoint import load_checkpoint
from engineforge.build.config import BuildConfig
from engineforge.build.context import BuildContext
from engineforge.build.steps import ExportConfig
from engineforge.engines import load_engine, synthetic_feeds
from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import EngineLoadError
from engineforge.serve.engine_runtime import open_bundle_engine
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_cpu


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_build_serve_and_benchmark_open_the_same_engine(tiny_bundle, tiny_checkpoint, tmp_path, runtime):  # noqa: F811
    spec = EngineSpec.from_dict(EngineSpec.load(tiny_bundle).to_dict() | {"runtime": runtime})
    model_file = tiny_bundle / spec.model_file

    info, model, tokenizer = load_checkpoint(tiny_checkpoint)
    config = BuildConfig(checkpoint=tiny_checkpoint, output_dir=tmp_path, steps=(ExportConfig(),),
                         intra_op_threads=spec.intra_op_threads)
    ctx = BuildContext.start(config, tmp_path, info, model, tokenizer)
    ctx.onnx_path = model_file
    build_timing = ctx.open_engine(runtime)  # what select_runtime times
    ctx.runtime = runtime
    build_validation = ctx.open_engine()  # what validate judges
    served = open_bundle_engine(tiny_bundle, spec)  # what the Triton engine model runs
    benchmark = bench_cpu.open_engine(
        bench_cpu.Candidate("x", "engineforge", runtime, model_file), spec.intra_op_threads)

    engines = [build_timing, build_validation, served, benchmark]
    settings = [engine.settings() for engine in engines]
    assert all(s == settings[0] for s in settings), settings
    assert settings[0]["runtime"] == runtime
    expected_threads = str(spec.intra_op_threads) if runtime == "openvino" else spec.intra_op_threads
    assert expected_threads in settings[0].values()
    feeds = synthetic_feeds(served.input_names, 3, 24, vocab_size=30522, seed=3)
    outputs = [engine.run(feeds) for engine in engines]
    for output in outputs[1:]:
        np.testing.assert_array_equal(output, outputs[0])


def test_onnxruntime_is_configured_as_served(tiny_bundle):  # noqa: F811
    settings = load_engine(tiny_bundle / "model.onnx", "onnxruntime", 2).settings()
    assert settings["intra_op_num_threads"] == 2 and settings["inter_op_num_threads"] == 1
    assert "SEQUENTIAL" in settings["execution_mode"] and "ENABLE_ALL" in settings["graph_optimization_level"]


def test_a_file_no_runtime_can_read_names_the_file_and_the_runtime(tmp_path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not a protobuf")
    for runtime in ("onnxruntime", "openvino"):
        with pytest.raises(EngineLoadError, match=rf"{broken}: {runtime} cannot load the engine"):
            load_engine(broken, runtime, 1)
    with pytest.raises(EngineLoadError, match="unknown engine runtime 'tvm'"):
        load_engine(broken, "tvm", 1)
