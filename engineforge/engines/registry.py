"""The runtime registry: each runtime registers how it opens an engine file and the facts the rest of engineforge
needs about it; `load_engine` is the one way in.

Build steps (export checks, validation, runtime selection, the int8 fallback), the served engine model and
the benchmarks all open engines here, so a runtime is configured in exactly one place and the engine that
is timed and validated during a build is the engine that is served. The build (which file goes into the bundle,
which runtimes are CPU candidates) and serving (CPU or GPU instances, how many) read the `Runtime` facts instead of
comparing runtime names. Adding a runtime is one module with a loader decorated by `register_runtime`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engineforge.errors import EngineLoadError

from .buckets import NO_BUCKETS, bucketed
from .traffic import check_length_buckets

# What a runtime reads: an ONNX file, a Hugging Face `save_pretrained` directory (torch-bnb) or a TensorRT plan
# (any other single file: MODEL_FILE).
MODEL_ONNX = "onnx"
MODEL_DIRECTORY = "directory"
MODEL_PLAN = "plan"  # a serialized TensorRT engine, with its metadata in engine.json beside it
MODEL_FILE = "file"
CPU, GPU = "CPU", "GPU"
# The token inputs an engine takes, in BERT's forward order; the first two are always there.
# The runtime every ONNX file is opened in for the build's own checks (export, pruning, fp32 reference) and the
# default an engine is served by.
REFERENCE_RUNTIME = "onnxruntime"

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
REQUIRED_TOKEN_INPUTS = TOKEN_INPUTS[:2]  # where an engine runs: Triton's instance kinds
# "module:function" that registers a runtime when called (engine.json names it for runtimes outside engineforge).
_PLUGIN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


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


# loader(path, threads) -> Engine; loaders that take session options accept them as a third argument.
Loader = Callable[..., Engine]


@dataclass(frozen=True)
class Runtime:
    """A runtime and its facts. Only `name`, `loader`, `model_kind` and `description` are required; the defaults
    describe a CPU runtime reading one file that the build does not consider on its own."""

    name: str
    loader: Loader
    model_kind: str  # MODEL_ONNX, MODEL_DIRECTORY, MODEL_PLAN or MODEL_FILE
    description: str
    bundle_file: str = "model.onnx"  # the engine's name in a bundle and in a published version directory
    device: str = CPU  # CPU or GPU: the Triton instance kind that serves it
    # select_runtime times it against the others on the exported ONNX graph; static_int8 checks its fallback in it.
    cpu_candidate: bool = False
    package: str = ""  # the Python package it needs; "" = always there
    # Served instances: None = as many as the cores allow (cores // engine threads, see serve.serving_defaults);
    # a number is fixed (per GPU for a GPU runtime), with its reason quoted in config.pbtxt.
    instances: int | None = None
    instances_reason: str = ""
    # Session options that stop the runtime's worker threads spinning after a call (timing several engines in one
    # process); empty when it has no such switch.
    quiet_options: Mapping[str, str] = field(default_factory=dict)
    # The EngineSpec field its bundles must carry (TensorRT: "tensorrt", its metadata), "" for none.
    spec_metadata: str = ""
    # "module:function" that registers it in a fresh process (the Triton stub); "" for engineforge's own runtimes,
    # which `engineforge.engines` registers on import. engine.json records it as `runtime_plugin`.
    plugin: str = ""
    # How it applies length buckets (buckets.NO_BUCKETS, PAD_ONLY or STATIC_PER_BUCKET: its loader then takes
    # `sequence_length=` and compiles a static sequence dim).
    bucketing: str = NO_BUCKETS

    @property
    def is_installed(self) -> bool:
        import importlib.util

        return not self.package or importlib.util.find_spec(self.package) is not None


_RUNTIMES: dict[str, Runtime] = {}


def register_runtime(name: str, *, model_kind: str, description: str, **facts: Any) -> Callable[[Loader], Loader]:
    """Decorator: `loader(path, threads) -> Engine` opens an engine file in runtime `name`; `facts` are the other
    `Runtime` fields (bundle_file, device, cpu_candidate, instances, quiet_options, plugin...)."""

    def decorator(loader: Loader) -> Loader:
        _RUNTIMES[name] = Runtime(name, loader, model_kind, description, **facts)
        return loader

    return decorator


def runtime_names() -> tuple[str, ...]:
    return tuple(_RUNTIMES)


def cpu_candidate_names() -> tuple[str, ...]:
    """Runtimes a build chooses between on the CPU (select_runtime candidates, static_int8 eval runtimes)."""
    return tuple(name for name, runtime in _RUNTIMES.items() if runtime.cpu_candidate)


def runtime_info(name: str) -> Runtime:
    try:
        return _RUNTIMES[name]
    except KeyError:
        raise EngineLoadError(f"unknown engine runtime {name!r}; choose one of {', '.join(_RUNTIMES)}") from None


def runtime_plugin(register: Callable[[], None]) -> Callable[[], None]:
    """Decorator marking the function that registers a runtime from outside engineforge. Only marked functions are
    called for an engine.json's `runtime_plugin`: the file names code, and no other function may run from it."""
    register.engineforge_runtime_plugin = True  # type: ignore[attr-defined]
    return register


def load_plugin(plugin: str, name: str) -> Runtime:
    """Register runtime `name` by calling `plugin` ("module:function", marked with `runtime_plugin`), unless it is
    registered already."""
    if name in _RUNTIMES:
        return _RUNTIMES[name]
    if not _PLUGIN.match(plugin):
        raise EngineLoadError(f"runtime {name!r}: plugin {plugin!r} is not 'module:function'")
    module, function = plugin.split(":")
    # The Triton python-backend stub runs Python isolated (PYTHONPATH ignored): a plugin module that is not
    # installed is still found where PYTHONPATH points, as in any other process.
    sys.path.extend(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path)
    try:
        register = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        raise EngineLoadError(f"runtime {name!r}: cannot register it with {plugin} ({type(exc).__name__}: {exc}); "
                              f"install its module where this Python finds it") from exc
    if not getattr(register, "engineforge_runtime_plugin", False):
        raise EngineLoadError(f"runtime {name!r}: {plugin} is not marked @runtime_plugin; not calling it")
    register()
    return runtime_info(name)


def load_engine(path: str | os.PathLike[str], runtime: str, threads: int,
                options: Mapping[str, str] | None = None, length_buckets: Sequence[int] = (),
                bucket_max_batch: int = 0) -> Engine:
    """Open the engine at `path` in `runtime` with `threads` intra-op threads (0 = the runtime's default) and the
    runtime's own session `options` (e.g. its `quiet_options`), if any; with `length_buckets` (engine.json's), every
    call is padded up to its bucket (buckets.BucketedEngine), compiled per bucket where the runtime does that.

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
    if options:
        try:
            inspect.signature(info.loader).bind(path, threads, options)
        except TypeError:
            raise EngineLoadError(f"runtime {runtime!r} takes no session options, got {dict(options)}") from None
    extra = (dict(options),) if options else ()
    if not length_buckets:
        return info.loader(path, threads, *extra)
    if info.bucketing == NO_BUCKETS:
        raise EngineLoadError(f"{path}: runtime {runtime!r} cannot pad to length buckets {list(length_buckets)}; "
                              "rebuild the engine without them (plan_serving buckets = \"off\")")
    if problem := check_length_buckets(list(length_buckets), max(length_buckets)):
        raise EngineLoadError(f"{path}: length buckets {problem}")

    def open_one(**shape: int) -> Engine:  # shape: sequence_length=L for STATIC_PER_BUCKET, nothing for the rest
        return info.loader(path, threads, *extra, **shape)

    return bucketed(open_one, length_buckets, info.bucketing, bucket_max_batch)


def load_failure(path: Path, runtime: str, exc: Exception, hint: str = "") -> EngineLoadError:
    """The error for a runtime that refused a file: runtimes put the cause on the last line."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return EngineLoadError(f"{path}: {runtime} cannot load the engine ({type(exc).__name__}: {lines[-1][:300]})"
                           + (f"; {hint}" if hint else ""))
