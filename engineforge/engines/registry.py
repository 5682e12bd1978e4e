"""The runtime registry: each runtime registers how it opens an engine file; `load_engine` is the one way in.

Build steps (export checks, validation, runtime selection, the int8 fallback), the served engine model and
the benchmarks all open engines here, so a runtime is configured in exactly one place and the engine that
is timed and validated during a build is the engine that is served. A new runtime (TensorRT) registers a
loader with `register_runtime`; nothing else changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engineforge.errors import EngineLoadError

# What a runtime reads: an ONNX file, a Hugging Face `save_pretrained` directory (torch-bnb) or a TensorRT plan.
MODEL_ONNX = "onnx"
MODEL_DIRECTORY = "directory"
MODEL_PLAN = "plan"  # a serialized TensorRT engine, with its metadata in engine.json beside it


class Engine(Protocol):
    """A loaded engine: int64 token-id feeds in, float logits [batch, num_labels] out."""

    runtime: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits for feeds keyed by input name (extra keys are ignored)."""
        ...

    def settings(self) -> dict[str, Any]:
        """How the runtime was configured, read back from it (threads, execution mode, precision...)."""
        ...


Loader = Callable[[Path, int], Engine]


@dataclass(frozen=True)
class Runtime:
    name: str
    loader: Loader
    model_kind: str  # MODEL_ONNX, MODEL_DIRECTORY or MODEL_PLAN
    description: str


_RUNTIMES: dict[str, Runtime] = {}


def register_runtime(name: str, *, model_kind: str, description: str) -> Callable[[Loader], Loader]:
    """Decorator: `loader(path, threads) -> Engine` opens an engine file in runtime `name`."""

    def decorator(loader: Loader) -> Loader:
        _RUNTIMES[name] = Runtime(name, loader, model_kind, description)
        return loader

    return decorator


def runtime_names() -> tuple[str, ...]:
    return tuple(_RUNTIMES)


def onnx_runtime_names() -> tuple[str, ...]:
    """Runtimes that run an ONNX file (the candidates a build can choose between)."""
    return tuple(name for name, runtime in _RUNTIMES.items() if runtime.model_kind == MODEL_ONNX)


def runtime_info(name: str) -> Runtime:
    try:
        return _RUNTIMES[name]
    except KeyError:
        raise EngineLoadError(f"unknown engine runtime {name!r}; choose one of {', '.join(_RUNTIMES)}") from None


def load_engine(path: str | os.PathLike[str], runtime: str, threads: int) -> Engine:
    """Open the engine at `path` in `runtime` with `threads` intra-op threads (0 = the runtime's default).

    Raises EngineLoadError naming the file and the cause when it is missing or the runtime refuses it.
    """
    info = runtime_info(runtime)
    path = Path(path)
    directory = info.model_kind == MODEL_DIRECTORY
    if not (path.is_dir() if directory else path.is_file()):
        kind = "engine directory" if directory else "engine file"
        raise EngineLoadError(f"{path}: {kind} missing; rebuild or republish the engine")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise EngineLoadError(f"threads must be an integer >= 0 (0 = runtime default), got {threads!r}")
    return info.loader(path, threads)


def load_failure(path: Path, runtime: str, exc: Exception, hint: str = "") -> EngineLoadError:
    """The error for a runtime that refused a file: runtimes put the cause on the last line."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return EngineLoadError(f"{path}: {runtime} cannot load the engine ({type(exc).__name__}: {lines[-1][:300]})"
                           + (f"; {hint}" if hint else ""))
