"""The runtimes an engine bundle can be served with, behind one small interface.

A loaded engine exposes `input_names` and `run(feeds) -> logits` (float32 [batch, num_labels]);
`engine_runtime.run_batch` calls it once per merged dynamic batch and does not care which runtime
answers. Heavy imports (onnxruntime, openvino, torch) happen inside the loaders so a stub only pays
for the runtime its engine needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engineforge.errors import RepositoryError

from .engine_spec import RUNTIMES, EngineSpec


class Engine(Protocol):
    """What the engine model needs from a runtime."""

    input_names: tuple[str, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits for int64 [batch, seq] feeds keyed by input name (extra keys are ignored)."""
        ...


def _model_path(engine_dir: str | os.PathLike[str], spec: EngineSpec) -> Path:
    path = Path(engine_dir) / spec.model_file
    exists = path.is_dir() if spec.model_is_directory else path.is_file()
    if not exists:
        kind = "engine directory" if spec.model_is_directory else "engine file"
        raise RepositoryError(f"{path}: {kind} missing; republish the engine bundle")
    return path


def _check_names(path: Path, inputs: set[str], outputs: set[str], spec: EngineSpec) -> None:
    if inputs != set(spec.input_names) or spec.output_name not in outputs:
        raise RepositoryError(
            f"{path}: graph inputs {sorted(inputs)} / outputs {sorted(outputs)} do not match "
            f"engine.json input_names {list(spec.input_names)} / output_name {spec.output_name!r}"
        )


class OrtEngine:
    """ONNX Runtime session (CPU execution provider)."""

    def __init__(self, session: Any, spec: EngineSpec) -> None:
        self.session = session
        self.input_names = tuple(spec.input_names)
        self.output_name = spec.output_name

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        (logits,) = self.session.run([self.output_name], {n: feeds[n] for n in self.input_names})
        return logits


def open_ort_session(engine_dir: str | os.PathLike[str], spec: EngineSpec) -> Any:
    """ORT session with graph optimizations and the thread count the build chose."""
    import onnxruntime as ort

    path = _model_path(engine_dir, spec)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = spec.intra_op_threads
    options.inter_op_num_threads = 1  # one sequential graph per call; parallelism is intra-op
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RepositoryError(f"{path}: ONNX Runtime cannot load the engine ({exc})") from exc
    _check_names(path, {i.name for i in session.get_inputs()}, {o.name for o in session.get_outputs()}, spec)
    return session


def openvino_properties(threads: int) -> dict[str, Any]:
    """CPU plugin settings shared by the build (validation, timing) and serving, so both compute the same.

    LATENCY: one stream on `threads` cores, like ORT's intra-op setting (0 = plugin default). f32 is
    pinned: on CPUs with AVX512-BF16 the plugin otherwise runs "fp32" graphs in bf16.
    """
    properties: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        properties["INFERENCE_NUM_THREADS"] = threads
    return properties


class OpenVinoEngine:
    """OpenVINO CPU plugin on the bundle's ONNX file (reads Q/DQ ONNX, not ORT's com.microsoft ops)."""

    def __init__(self, engine_dir: str | os.PathLike[str], spec: EngineSpec) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise RepositoryError("runtime 'openvino' needs the openvino package in the server's "
                                  "environment: pip install 'engineforge[openvino]'") from exc
        path = _model_path(engine_dir, spec)
        core = ov.Core()
        try:
            compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                          openvino_properties(spec.intra_op_threads))
        except Exception as exc:  # e.g. an ORT-only contrib op such as com.microsoft.QAttention
            raise RepositoryError(f"{path}: OpenVINO cannot compile the engine ({exc}); OpenVINO reads plain and "
                                  "Q/DQ ONNX, not ONNX Runtime's dynamic-int8 or MatMulNBits graphs") from exc
        outputs = {name for port in compiled.outputs for name in port.get_names()}
        _check_names(path, {port.get_any_name() for port in compiled.inputs}, outputs, spec)
        self.input_names = tuple(spec.input_names)
        self._output = compiled.output(spec.output_name)
        self._request = compiled.create_infer_request()  # one per model instance; execute() is sequential

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        result = self._request.infer({n: feeds[n] for n in self.input_names})
        return np.array(result[self._output])  # copy: the request reuses its output buffer


class TorchBnbEngine:
    """A bitsandbytes 4-bit `*ForSequenceClassification` saved with `save_pretrained`, run by PyTorch."""

    def __init__(self, engine_dir: str | os.PathLike[str], spec: EngineSpec) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        path = _model_path(engine_dir, spec)
        if not (path / "config.json").is_file():
            raise RepositoryError(f"{path}: no config.json; a torch-bnb engine is a save_pretrained directory")
        hf_logging.disable_progress_bar()  # weight-loading bars would flood the server log
        if spec.intra_op_threads:
            torch.set_num_threads(spec.intra_op_threads)  # process-wide: each Triton instance is its own stub
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(path), device_map="cpu", local_files_only=True)
        except Exception as exc:
            raise RepositoryError(f"{path}: cannot load the 4-bit model ({type(exc).__name__}: {exc}); "
                                  "serving torch-bnb needs bitsandbytes and accelerate installed") from exc
        if getattr(model.config, "quantization_config", None) is None:
            raise RepositoryError(f"{path}: config.json has no quantization_config; this is not a bitsandbytes "
                                  "model (serve an fp32 model through ONNX instead)")
        self.model = model.eval()
        self.input_names = tuple(spec.input_names)
        self._torch = torch

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            tensors = {n: torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names}
            return self.model(**tensors).logits.float().numpy()


def load_engine(engine_dir: str | os.PathLike[str], spec: EngineSpec) -> Engine:
    """Open the bundle's model in the runtime named by engine.json."""
    if spec.runtime == "onnxruntime":
        return OrtEngine(open_ort_session(engine_dir, spec), spec)
    if spec.runtime == "openvino":
        return OpenVinoEngine(engine_dir, spec)
    if spec.runtime == "torch-bnb":
        return TorchBnbEngine(engine_dir, spec)
    raise RepositoryError(f"engine runtime {spec.runtime!r} is not servable; choose one of {RUNTIMES}")


def as_engine(engine_or_session: Any, spec: EngineSpec) -> Engine:
    """Accept a bare ORT session too: model.py files published by older engineforge pass one."""
    if hasattr(engine_or_session, "get_inputs") and not hasattr(engine_or_session, "input_names"):
        return OrtEngine(engine_or_session, spec)
    return engine_or_session
