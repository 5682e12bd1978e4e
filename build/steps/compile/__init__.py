"""`compile`: the current ONNX graph -> a TensorRT plan for NVIDIA GPUs, with its metadata (engine.json).

Precision the TensorRT 10/11 way, from the graph: `int8` compiles the static_int8 step's symmetric Q/DQ graph,
`fp16` compiles an fp16 copy of the fp32 graph (LayerNorm/Softmax/reductions kept fp32), `fp32` the graph as
it is. The profile covers batch 1..the Triton max_batch_size and sequence 1..max_sequence_length, so every
batch the dynamic batcher forms fits it. Full TensorRT is used where installed (it builds on a GPU for that
GPU); TensorRT-RTX otherwise, which builds ahead of time without a GPU for RTX GPUs (SM75-SM121).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from engineforge.engines.tensorrt_api import FLAVOURS, INSTALL_HINT, current_gpu, find_tensorrt
from engineforge.engines.tensorrt_engine import RUNTIME, TensorRTMetadata, sha256_file, write_metadata
from engineforge.errors import CompileError, ConfigError

from ...config import ENGINE, PORTABLE_ONNX, QDQ_INT8_ONNX, STAGE_COMPILE, Artifact, BuildConfig, StepConfig, require
from ...context import BuildContext
from ...files import file_mb
from ...step_output import StepOutput
from ...step_registry import register_step
from ..publish import PublishConfig
from ..static_int8 import StaticInt8Config
from ..static_int8.qdq_checks import is_symmetric_int8, qdq_summary
from .fp16_graph import convert_to_fp16
from .tensorrt_compile import (
    Profile,
    build_plan,
    declared_precisions,
    inspect_engine,
    outputs,
    parse_onnx,
    token_inputs,
)

TARGETS = ("tensorrt",)
PRECISIONS = ("fp16", "int8", "fp32")
DEFAULT_MAX_BATCH = 32  # publish's default max_batch_size, when the recipe does not publish


@dataclass(frozen=True)
class CompileConfig(StepConfig):
    """Compile the ONNX graph with TensorRT. Shapes are [batch, sequence]; empty = derived from the build."""

    step_type: ClassVar[str] = "compile"
    stage: ClassVar[int] = STAGE_COMPILE
    requires = frozenset({PORTABLE_ONNX})
    provides = frozenset({ENGINE})

    target: str = "tensorrt"
    precision: str = "fp16"
    min_shape: tuple[int, ...] = ()  # default [1, 1]
    opt_shape: tuple[int, ...] = ()  # default [min(8, max batch), max sequence]
    max_shape: tuple[int, ...] = ()  # default [publish.max_batch_size, max_sequence_length]
    # TensorRT-RTX: architectures to build for ("SM89", ...; empty = all it supports from Ampere, SM80, on).
    # Full TensorRT builds for the GPU it runs on.
    gpu_architectures: tuple[str, ...] = ()
    optimization_level: int = 3
    workspace_mb: int = 2048
    # "auto" = a cache file per TensorRT version and GPU under ~/.cache/engineforge/tensorrt; "" = none.
    timing_cache: str = "auto"

    def __post_init__(self) -> None:
        for name in ("min_shape", "opt_shape", "max_shape", "gpu_architectures"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        require(self.target in TARGETS, f"compile.target={self.target!r}: choose one of {list(TARGETS)}")
        require(self.precision in PRECISIONS, f"compile.precision={self.precision!r}: choose one of "
                f"{list(PRECISIONS)} (int8 needs a static_int8 step before compile)")
        for name in ("min_shape", "opt_shape", "max_shape"):
            shape = getattr(self, name)
            require(shape == () or (len(shape) == 2 and all(isinstance(d, int) and d >= 1 for d in shape)),
                    f"compile.{name}={list(shape)}: give [batch, sequence], both >= 1, or leave it out")
        require(0 <= self.optimization_level <= 5, f"compile.optimization_level={self.optimization_level}: use 0..5")
        require(self.workspace_mb >= 16, f"compile.workspace_mb={self.workspace_mb}: give at least 16")

    def prerequisites(self) -> frozenset[Artifact]:
        return self.requires | ({QDQ_INT8_ONNX} if self.precision == "int8" else set())

    def profile(self, build: BuildConfig) -> Profile:
        publish = build.step(PublishConfig)
        max_batch = publish.max_batch_size if isinstance(publish, PublishConfig) else DEFAULT_MAX_BATCH
        high = tuple(self.max_shape or (max_batch, build.max_sequence_length))
        opt = tuple(self.opt_shape or (min(8, high[0]), high[1]))
        return Profile(tuple(self.min_shape or (1, 1)), opt, high)  # type: ignore[arg-type]

    def check_environment(self) -> None:
        # Found out before prune, distill, export and static_int8 spend their time (spec only: no import).
        if not any(importlib.util.find_spec(name) for name in FLAVOURS):
            raise CompileError(f"the compile step needs TensorRT: {INSTALL_HINT}")

    def check_in(self, build: BuildConfig) -> None:
        profile = self.profile(build)
        publish = build.step(PublishConfig)
        if isinstance(publish, PublishConfig) and profile.max[0] < publish.max_batch_size:
            raise ConfigError(f"compile.max_shape batch {profile.max[0]} is below publish.max_batch_size "
                              f"{publish.max_batch_size}: Triton would form batches the engine cannot take; "
                              "raise max_shape or lower max_batch_size")
        if profile.max[1] < build.max_sequence_length:
            raise ConfigError(f"compile.max_shape sequence {profile.max[1]} is below max_sequence_length "
                              f"{build.max_sequence_length}: raise it or lower --max-seq-len")
        require(all(a <= b <= c for a, b, c in zip(profile.min, profile.opt, profile.max, strict=True)),
                f"compile: shapes must grow min <= opt <= max, got {profile.to_dict()}")
        static = build.step(StaticInt8Config)
        if self.precision != "int8" and static is not None:
            raise ConfigError(f"compile.precision={self.precision!r} after static_int8: the graph is already int8; "
                              "use precision = \"int8\", or drop static_int8")
        if isinstance(static, StaticInt8Config) and static.activation_type != "int8":
            raise ConfigError("compile: TensorRT rejects uint8 Q/DQ activations; set static_int8.activation_type "
                              "= \"int8\" (symmetric, the default)")


def timing_cache_path(config: CompileConfig, flavour: str, version: str) -> Path | None:
    if not config.timing_cache:
        return None
    if config.timing_cache != "auto":
        return Path(config.timing_cache)
    gpu = current_gpu()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "engineforge" / "tensorrt"
    return base / f"timing-{flavour}-{version}-{gpu[1] if gpu else 'nogpu'}.cache"


@register_step(CompileConfig)
def compile_engine(ctx: BuildContext, config: CompileConfig) -> StepOutput:
    trt = find_tensorrt()
    if trt is None:  # check_environment found the module; importing it can still fail (a broken install)
        raise CompileError(f"the compile step needs TensorRT: {INSTALL_HINT}")
    source = ctx.onnx_path  # PORTABLE_ONNX: check_build follows it there, run_step holds steps to it
    assert source is not None
    out = ctx.work_dir / "tensorrt"
    out.mkdir(exist_ok=True)
    details: dict[str, Any] = {"flavour": trt.flavour, "version": trt.version, "precision": config.precision}
    handed, precision = source, None  # int8: the static_int8 graph's precision stays
    if config.precision == "fp16":
        handed, precision = out / "model.fp16.onnx", "fp16"
        details["fp16_graph"] = convert_to_fp16(source, handed)
    elif config.precision == "int8":
        summary = qdq_summary(handed)
        if not is_symmetric_int8(summary):
            raise CompileError(f"{handed}: TensorRT needs symmetric int8 Q/DQ activations, the graph has "
                               f"{summary['activation_types']}; set static_int8.activation_type = \"int8\"")
        details["qdq"] = summary
    else:
        precision = "fp32"
    parsed = parse_onnx(trt, handed)
    profile = config.profile(ctx.config)
    plan, builder = build_plan(trt, parsed, profile, optimization_level=config.optimization_level,
                               workspace_mb=config.workspace_mb, gpu_architectures=config.gpu_architectures,
                               timing_cache=timing_cache_path(config, trt.flavour, trt.version))
    plan_path = out / "model.plan"
    plan_path.write_bytes(plan)
    gpu = current_gpu()
    inputs = token_inputs(parsed.network)
    metadata = TensorRTMetadata(
        flavour=trt.flavour, version=trt.version, gpu_architectures=tuple(builder["gpu_architectures"]),
        built_on=f"{gpu[0]} ({gpu[1]})" if gpu else "no GPU (ahead-of-time build)", precision=config.precision,
        profiles=({t["name"]: profile.to_dict() for t in inputs},), inputs=tuple(inputs),
        outputs=tuple(outputs(parsed.network)), onnx_sha256=sha256_file(handed), plan_sha256=sha256_file(plan_path),
        plan_bytes=plan_path.stat().st_size, builder={k: v for k, v in builder.items() if k != "gpu_architectures"})
    write_metadata(out, metadata)
    if handed.parent != out:  # keep the exact ONNX TensorRT was given beside its plan
        shutil.copyfile(handed, out / handed.name)
    return StepOutput(runtime=RUNTIME, plan_path=plan_path, compiled_onnx_path=handed, precision=precision,
                      tensorrt_metadata=metadata.to_dict(), details=details | {
                          "file": "tensorrt/model.plan", "size_mb": file_mb(plan_path), "onnx_given": handed.name,
                          "build_seconds": builder["build_seconds"], "gpu_architectures": builder["gpu_architectures"],
                          "profile": profile.to_dict(), "timing_cache": builder["timing_cache"],
                          "layer_precisions": declared_precisions(parsed.network),
                          "engine_inspector": inspect_engine(plan_path)})
