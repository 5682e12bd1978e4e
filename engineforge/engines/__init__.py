"""One engine layer for build, serving and benchmarks: `load_engine(path, runtime, threads) -> Engine`.

Runtimes register themselves here, with their facts (ONNX Runtime, OpenVINO, torch-bnb, TensorRT);
heavy imports happen inside the loaders, so importing this package stays cheap.
"""

from . import onnxruntime_engine, openvino_engine, tensorrt_engine, torch_engine  # noqa: F401  (each registers its runtime)
from .registry import (
    TOKEN_INPUTS,
    Engine,
    Runtime,
    cpu_candidate_names,
    load_engine,
    register_runtime,
    runtime_info,
    runtime_names,
)
from .text import batches, encode, engine_logits, model_input_names
from .timing import Latency, measure_latencies, measure_latency, synthetic_feeds
from .torch_engine import TorchEngine

__all__ = [
    "TOKEN_INPUTS", "Engine", "Latency", "Runtime", "TorchEngine", "batches", "cpu_candidate_names", "encode",
    "engine_logits", "load_engine", "measure_latencies", "measure_latency", "model_input_names", "register_runtime",
    "runtime_info", "runtime_names", "synthetic_feeds",
]
