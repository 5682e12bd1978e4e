"""OpenVINO CPU plugin on an ONNX file (plain or Q/DQ; not ONNX Runtime's com.microsoft contrib ops)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engineforge.errors import EngineLoadError

from .buckets import STATIC_PER_BUCKET
from .registry import MODEL_ONNX, load_failure, register_runtime

RUNTIME = "openvino"


def openvino_properties(threads: int) -> dict[str, Any]:
    """LATENCY: one stream on `threads` cores, like ORT's intra-op setting (0 = plugin default). f32 is
    pinned: on CPUs with AVX512-BF16 the plugin otherwise runs "fp32" graphs in bf16. No CPU pinning: served,
    the engine shares the cores with Triton's and the clients' threads, and pinned threads then wait for a busy
    core (demo engine 1x128 beside a busy thread: 2.76 ms pinned, 2.41 ms not; alone both 1.6-1.7 ms)."""
    properties: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                  "ENABLE_CPU_PINNING": False}
    if threads:
        properties["INFERENCE_NUM_THREADS"] = threads
    return properties


class OpenVinoEngine:
    runtime = RUNTIME

    def __init__(self, path: Path, compiled: Any) -> None:
        self.path = path
        self.compiled = compiled
        self.input_names = tuple(port.get_any_name() for port in compiled.inputs)
        self.output_names = tuple(port.get_any_name() for port in compiled.outputs)
        self._output = compiled.output(0)
        self._request = compiled.create_infer_request()  # one per engine; callers run it sequentially

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        result = self._request.infer({n: feeds[n] for n in self.input_names})
        return np.array(result[self._output])  # copy: the request reuses its output buffer

    def settings(self) -> dict[str, Any]:
        names = ("PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS",
                 "ENABLE_CPU_PINNING")
        return {"runtime": RUNTIME, **{name.lower(): str(self.compiled.get_property(name)) for name in names}}


# OpenVINO has no spin switch (no quiet_options): benchmarks pause between engines instead.
# Length buckets: one compiled model per bucket with a static sequence dim; alternating between them costs nothing,
# where one dynamic-shape model pays ~1 ms per shape change (benchmarks/bench_shape_changes.py).
@register_runtime(RUNTIME, model_kind=MODEL_ONNX, description="OpenVINO CPU plugin, f32 pinned", cpu_candidate=True,
                  package="openvino", bucketing=STATIC_PER_BUCKET)
def load_openvino(path: Path, threads: int, options: Mapping[str, Any] | None = None,
                  sequence_length: int | None = None) -> OpenVinoEngine:
    """`options` are compile properties on top of `openvino_properties`; `sequence_length` compiles the model for
    that many tokens only (the batch dim stays dynamic: the dynamic batcher forms any size)."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise EngineLoadError("runtime 'openvino' needs the openvino package (a dependency of engineforge): "
                              "reinstall engineforge into this environment") from exc
    core = ov.Core()
    try:
        model = core.read_model(str(path))
        if sequence_length is not None:
            model.reshape({port.get_any_name(): ov.PartialShape([-1, sequence_length]) for port in model.inputs})
        compiled = core.compile_model(model, "CPU", openvino_properties(threads) | dict(options or {}))
    except Exception as exc:  # e.g. an ORT-only contrib op such as com.microsoft.QAttention
        raise load_failure(path, RUNTIME, exc, "OpenVINO reads plain and Q/DQ ONNX, not ONNX Runtime's "
                                               "dynamic-int8 or MatMulNBits graphs") from exc
    return OpenVinoEngine(path, compiled)
