"""The LM runtime registry: how each runtime opens a bundle's model files as an `LMEngine`.

A runtime is one module with an opener decorated by `register_lm_runtime`; the bundle's spec names it. Builders
(how a checkpoint becomes a runtime's files) live in the build layer (`engineforge.build.lm`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engineforge.errors import EngineLoadError

from .engine import LMEngine

Opener = Callable[..., LMEngine]  # (spec, model_dir, threads=, max_batch=) -> LMEngine
_OPENERS: dict[str, Opener] = {}
# Modules that register the built-in runtimes when imported (imported lazily: each pulls in its runtime).
_BUILTIN = {"torch": "engineforge.lm.torch_runtime", "onnxruntime-genai": "engineforge.lm.ortgenai_runtime",
            "onnxruntime": "engineforge.lm.ort_decoder_runtime",
            "openvino-genai": "engineforge.lm.openvino_genai_runtime"}


def register_lm_runtime(name: str) -> Callable[[Opener], Opener]:
    def register(opener: Opener) -> Opener:
        _OPENERS[name] = opener
        return opener
    return register


def lm_runtime_names() -> tuple[str, ...]:
    return tuple(sorted(set(_BUILTIN) | set(_OPENERS)))


def open_lm_engine(spec: Any, model_dir: Path, threads: int | None = None, max_batch: int = 8) -> LMEngine:
    if spec.runtime not in _OPENERS and spec.runtime in _BUILTIN:
        importlib.import_module(_BUILTIN[spec.runtime])
    opener = _OPENERS.get(spec.runtime)
    if opener is None:
        raise EngineLoadError(f"LM runtime {spec.runtime!r} is not known; known: {', '.join(lm_runtime_names())}")
    if not Path(model_dir).is_dir():
        raise EngineLoadError(f"{model_dir}: the engine's model files are missing; rebuild or republish the engine")
    try:
        return opener(spec, Path(model_dir), threads=threads, max_batch=max_batch)
    except EngineLoadError:
        raise
    except Exception as exc:
        raise EngineLoadError(f"{spec.runtime} cannot open {model_dir}: {type(exc).__name__}: {exc}") from exc
