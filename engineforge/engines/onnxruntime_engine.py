"""ONNX Runtime (CPU execution provider), configured once for build, serving and benchmarks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .buckets import PAD_ONLY
from .registry import MODEL_ONNX, load_failure, register_runtime

RUNTIME = "onnxruntime"


# Off, ORT's intra-op workers stop spinning on the cores after each call (see benchmarks/cpu_timing.py).
QUIET_OPTIONS = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def session_options(threads: int, entries: Mapping[str, str] | None = None) -> Any:
    """Intra-op threads as asked, one sequential graph per call (parallelism is intra-op: inter-op threads
    only compete for the same cores), every graph optimization ORT has; `entries` are session config entries."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    for key, value in (entries or {}).items():
        options.add_session_config_entry(key, value)
    return options


class OnnxRuntimeEngine:
    runtime = RUNTIME

    def __init__(self, path: Path, session: Any) -> None:
        self.path = path
        self.session = session
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        (logits,) = self.session.run(self.output_names[:1], {n: feeds[n] for n in self.input_names})
        return logits

    def settings(self) -> dict[str, Any]:
        options = self.session.get_session_options()
        return {"runtime": RUNTIME, "providers": self.session.get_providers(),
                "intra_op_num_threads": options.intra_op_num_threads,
                "inter_op_num_threads": options.inter_op_num_threads,
                "execution_mode": str(options.execution_mode),
                "graph_optimization_level": str(options.graph_optimization_level)}


@register_runtime(RUNTIME, model_kind=MODEL_ONNX, description="ONNX Runtime, CPU execution provider",
                  cpu_candidate=True, package="onnxruntime", quiet_options=QUIET_OPTIONS,
                  bucketing=PAD_ONLY)  # one session runs every shape: buckets can only pad
def load_onnxruntime(path: Path, threads: int, options: Mapping[str, str] | None = None) -> OnnxRuntimeEngine:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), session_options(threads, options),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for unreadable or unsupported graphs
        raise load_failure(path, RUNTIME, exc) from exc
    return OnnxRuntimeEngine(path, session)
