"""The `tensorrt` runtime: a serialized TensorRT plan, its metadata, and execution on an NVIDIA GPU.

Every plan has its metadata beside it in `engine.json` (key "tensorrt"): flavour and version, target GPU
architectures, profiles, precision, inputs/outputs, and the hashes of the plan and of its source ONNX. Loading
checks, in this order and each with a message naming the file: the plan is whole (its hash), the installed
TensorRT is the one that built it, a GPU is present (NoGpuError otherwise: callers without a GPU can fall
back), the GPU is a target; only then is the plan deserialized.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engineforge.errors import EngineLoadError

from .registry import GPU, MODEL_PLAN, register_runtime
from .tensorrt_api import TensorRT, current_gpu, make_logger, require_tensorrt

RUNTIME = "tensorrt"
METADATA_FILE = "engine.json"
METADATA_KEY = "tensorrt"
PLAN_FILE = "model.plan"  # a plan's name in a bundle


class NoGpuError(EngineLoadError):
    """The engine is fine, but this machine has no CUDA GPU to run it on."""


@dataclass(frozen=True)
class TensorRTMetadata:
    flavour: str  # "tensorrt" or "tensorrt-rtx"
    version: str
    gpu_architectures: tuple[str, ...]  # e.g. ("SM89",); empty = the GPU it was built on (full TensorRT)
    built_on: str  # GPU name, or "no GPU (ahead-of-time build)"
    precision: str  # fp32, fp16 or int8
    profiles: tuple[dict[str, Any], ...]  # [{"input": {"min": [...], "opt": [...], "max": [...]}}]
    inputs: tuple[dict[str, Any], ...]  # [{"name", "dtype", "shape"}]
    outputs: tuple[dict[str, Any], ...]
    onnx_sha256: str
    plan_sha256: str
    plan_bytes: int
    builder: dict[str, Any] = field(default_factory=dict)  # optimization level, workspace, timing cache

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> TensorRTMetadata:
        try:
            values = {**data, **{k: tuple(data[k]) for k in ("gpu_architectures", "profiles", "inputs", "outputs")}}
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise EngineLoadError(f"{source}: TensorRT metadata is incomplete ({exc}); rebuild the engine") from exc

    @property
    def max_batch_size(self) -> int:
        return min(int(p[name]["max"][0]) for p in self.profiles for name in p)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(plan: Path) -> TensorRTMetadata:
    source = plan.parent / METADATA_FILE
    try:
        data = json.loads(source.read_text(encoding="utf-8"))[METADATA_KEY]
    except FileNotFoundError:
        raise EngineLoadError(f"{plan}: no {METADATA_FILE} beside the plan; a plan is only loaded with the "
                              "metadata of its build (rebuild or republish it with engineforge)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EngineLoadError(f"{source}: unreadable TensorRT metadata ({exc!r}); rebuild the engine") from exc
    return TensorRTMetadata.from_dict(data, str(source))


def write_metadata(directory: Path, metadata: TensorRTMetadata) -> Path:
    path = directory / METADATA_FILE
    path.write_text(json.dumps({METADATA_KEY: metadata.to_dict()}, indent=2) + "\n", encoding="utf-8")
    return path


def check_plan(plan: Path, metadata: TensorRTMetadata) -> TensorRT:
    """Everything that can be checked without a GPU: the file is whole and this TensorRT built it; returns it."""
    size = plan.stat().st_size
    if size != metadata.plan_bytes or sha256_file(plan) != metadata.plan_sha256:
        raise EngineLoadError(f"{plan}: corrupt or truncated TensorRT plan ({size} bytes; its build wrote "
                              f"{metadata.plan_bytes} bytes with another hash); rebuild or republish the engine")
    trt = require_tensorrt(f"{plan}")
    if (trt.flavour, trt.version) != (metadata.flavour, metadata.version):
        raise EngineLoadError(f"{plan}: built by {metadata.flavour} {metadata.version}, but this machine has "
                              f"{trt.describe()}; plans only load in the TensorRT that built them: rebuild the "
                              f"engine here, or install {metadata.flavour} {metadata.version}")
    return trt


def check_gpu(plan: Path, metadata: TensorRTMetadata) -> str:
    gpu = current_gpu()
    if gpu is None:
        raise NoGpuError(f"{plan}: running a TensorRT engine needs an NVIDIA GPU with CUDA, and none is usable "
                         "here (torch.cuda.is_available() is False)")
    name, arch = gpu
    if metadata.gpu_architectures and arch not in metadata.gpu_architectures:
        raise EngineLoadError(f"{plan}: built for {', '.join(metadata.gpu_architectures)} by {metadata.flavour} "
                              f"{metadata.version}, but this GPU is {name} ({arch}); rebuild the engine for it")
    return f"{name} ({arch})"


class TensorRTEngine:
    """One execution context on CUDA device `torch.cuda.current_device()`; inputs and outputs go through torch
    CUDA tensors (torch is already a dependency; no second CUDA binding)."""

    runtime = RUNTIME

    def __init__(self, path: Path, engine: Any, metadata: TensorRTMetadata, gpu: str, trt: TensorRT,
                 keep_alive: Any) -> None:
        import torch

        self.path, self.engine, self.metadata, self.gpu = path, engine, metadata, gpu
        self._keep_alive = keep_alive  # the IRuntime and logger must outlive the engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = trt.module.TensorIOMode
        self.input_names = tuple(n for n in names if engine.get_tensor_mode(n) == mode.INPUT)
        self.output_names = tuple(n for n in names if engine.get_tensor_mode(n) == mode.OUTPUT)
        self._torch, self._trt = torch, trt
        self._stream = torch.cuda.Stream()

    def _torch_dtype(self, name: str) -> Any:
        return {"INT64": self._torch.int64, "INT32": self._torch.int32, "FLOAT": self._torch.float32,
                "HALF": self._torch.float16, "BF16": self._torch.bfloat16}[self.engine.get_tensor_dtype(name).name]

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with torch.cuda.stream(self._stream):
            keep = []  # device tensors must live until the stream is done
            for name in self.input_names:
                tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).to("cuda", self._torch_dtype(name))
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
                keep.append(tensor)
            outputs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise EngineLoadError(f"{self.path}: TensorRT execution failed for shapes "
                                      f"{[tuple(t.shape) for t in keep]}")
            self._stream.synchronize()
        return outputs[self.output_names[0]].float().cpu().numpy()

    def layer_information(self) -> dict[str, Any]:
        """The engine inspector's JSON: one entry per layer with its output formats and precisions."""
        inspector = self.engine.create_engine_inspector()
        return json.loads(inspector.get_engine_information(self._trt.module.LayerInformationFormat.JSON))

    def settings(self) -> dict[str, Any]:
        return {"runtime": RUNTIME, "flavour": self.metadata.flavour, "version": self.metadata.version,
                "precision": self.metadata.precision, "gpu": self.gpu}


@register_runtime(RUNTIME, model_kind=MODEL_PLAN, description="TensorRT plan on an NVIDIA GPU",
                  bundle_file=PLAN_FILE, device=GPU, spec_metadata=METADATA_KEY, instances=1,
                  instances_reason="1 per GPU: one TensorRT engine saturates its GPU; batching, not instances, "
                                   "adds load")
def load_tensorrt(path: Path, threads: int) -> TensorRTEngine:
    del threads  # GPU execution: CPU threads do not apply
    metadata = read_metadata(path)
    trt = check_plan(path, metadata)
    gpu = check_gpu(path, metadata)
    logger = make_logger(trt)
    runtime = trt.module.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise EngineLoadError(f"{path}: {trt.describe()} cannot deserialize the plan on {gpu}: "
                              f"{logger.last_error()[:300]}")
    return TensorRTEngine(path, engine, metadata, gpu, trt, (runtime, logger))
