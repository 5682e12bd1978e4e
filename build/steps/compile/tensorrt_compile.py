"""ONNX -> serialized TensorRT plan: parse (errors per node), optimization profile, strongly typed build,
timing cache, and what precision each layer ended in.

Precision is the graph's (strongly typed network): INT8 from explicit symmetric Q/DQ, FP16 from an fp16 graph.
No INT8/FP16 builder flags and no calibrators: TensorRT 10 deprecated them and TensorRT 11 removed them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge.engines.tensorrt_api import (
    TensorRT,
    current_gpu,
    make_logger,
    supported_architectures,
)
from engineforge.engines.tensorrt_engine import RUNTIME, NoGpuError
from engineforge.errors import CompileError, EngineLoadError

Shape = tuple[int, int]  # (batch, sequence)


@dataclass(frozen=True)
class Profile:
    """One optimization profile, applied to every [batch, sequence] token input."""

    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass
class Parsed:
    builder: Any
    network: Any
    parser: Any  # the network only borrows from the parser: keep both alive together
    logger: Any


def parse_onnx(trt: TensorRT, onnx_path: Path) -> Parsed:
    """Parse into a strongly typed network; a graph TensorRT cannot read raises CompileError per failing node."""
    logger = make_logger(trt)
    builder = trt.module.Builder(logger)
    flags = 1 << int(trt.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.module.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        lines = [_describe_error(e) for e in errors[:5]] + ([f"+{len(errors) - 5} more"] if len(errors) > 5 else [])
        raise CompileError(f"{onnx_path}: the ONNX parser of {trt.describe()} rejects {len(errors)} node(s): "
                           + "; ".join(lines) + ". TensorRT runs standard ONNX ops only: compile the graph before "
                           "any step that writes ONNX Runtime-only ops (graph_optimize, dynamic_int8, "
                           "int4_weight_only)")
    return Parsed(builder, network, parser, logger)


def _describe_error(error: Any) -> str:
    node = error.node()
    where = f"node {node} '{error.node_name()}' ({error.node_operator()})" if node >= 0 else "the model"
    return f"{where}: {error.desc().strip()[:240]}"


def token_inputs(network: Any) -> list[dict[str, Any]]:
    return [_tensor(network.get_input(i)) for i in range(network.num_inputs)]


def outputs(network: Any) -> list[dict[str, Any]]:
    return [_tensor(network.get_output(i)) for i in range(network.num_outputs)]


def _tensor(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "dtype": tensor.dtype.name, "shape": list(tensor.shape)}


def declared_precisions(network: Any) -> dict[str, Any]:
    """Output type of every compute layer of the strongly typed network, which the engine keeps: a summary by
    type, and the matrix multiplies apart (they are where the time goes)."""
    skip = {"CONSTANT", "SHAPE", "SHUFFLE", "IDENTITY", "GATHER", "SLICE", "CONCATENATION", "UNSQUEEZE",
            "SQUEEZE", "FILL", "CAST", "CONDITION", "ASSERTION"}
    by_type: Counter[str] = Counter()
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type.name in skip or layer.num_outputs == 0:
            continue
        dtype = layer.get_output_type(0).name
        if dtype not in ("INT64", "INT32", "BOOL"):  # those are index and mask arithmetic
            by_type[dtype] += 1
    return {"compute_layers_by_output_type": dict(by_type),
            "matrix_multiplies_by_input_type": _matmul_inputs(network),
            "source": "strongly typed network (the built engine keeps these types)"}


def _matmul_inputs(network: Any) -> dict[str, int]:
    """A matrix multiply fed by DequantizeLinear runs in INT8; otherwise in its input type."""
    producers = {}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        for out in range(layer.num_outputs):
            producers[layer.get_output(out).name] = layer.type.name
    counts: Counter[str] = Counter()
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type.name != "MATRIX_MULTIPLY":
            continue
        source = producers.get(layer.get_input(0).name, "")
        counts["INT8" if source == "DEQUANTIZE" else layer.get_input(0).dtype.name] += 1
    return dict(counts)


def build_plan(trt: TensorRT, parsed: Parsed, profile: Profile, *, optimization_level: int, workspace_mb: int,
               gpu_architectures: Sequence[str], timing_cache: Path | None) -> tuple[bytes, dict[str, Any]]:
    """Build and serialize; returns the plan and what the builder was told and did."""
    module, network = trt.module, parsed.network
    config = parsed.builder.create_builder_config()
    config.builder_optimization_level = optimization_level
    config.set_memory_pool_limit(module.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.profiling_verbosity = module.ProfilingVerbosity.DETAILED  # lets the inspector name layer types
    shapes = parsed.builder.create_optimization_profile()
    for tensor in token_inputs(network):
        shapes.set_shape(tensor["name"], profile.min, profile.opt, profile.max)
    config.add_optimization_profile(shapes)
    targets = _set_targets(trt, config, gpu_architectures)
    cache = _attach_timing_cache(trt, config, timing_cache)
    started = time.perf_counter()
    plan = parsed.builder.build_serialized_network(network, config)
    if plan is None:
        raise CompileError(f"{trt.describe()} could not build the engine: {parsed.logger.last_error()[:400]}")
    seconds = round(time.perf_counter() - started, 2)
    if timing_cache is not None and trt.has_timing_cache:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
        cache["saved_bytes"] = timing_cache.stat().st_size
    return bytes(plan), {"build_seconds": seconds, "optimization_level": optimization_level,
                         "workspace_mb": workspace_mb, "gpu_architectures": targets, "timing_cache": cache}


def _set_targets(trt: TensorRT, config: Any, requested: Sequence[str]) -> list[str]:
    gpu = current_gpu()
    if not trt.builds_without_gpu:
        if gpu is None:
            raise CompileError(f"{trt.describe()} builds engines only on an NVIDIA GPU, and none is usable here; "
                               "build on the GPU type that will serve, or install TensorRT-RTX "
                               "(`pip install 'engineforge[tensorrt]'`) to build ahead of time for RTX GPUs")
        if requested and list(requested) != [gpu[1]]:
            raise CompileError(f"full TensorRT builds for the GPU it runs on ({gpu[0]}, {gpu[1]}), not "
                               f"{list(requested)}: build on that GPU type")
        return [gpu[1]]
    supported = supported_architectures(trt)
    # Default: Ampere and newer. TensorRT-RTX has no FP32 GEMM for Turing (SM75), so an int8 graph with any matmul
    # kept fp32 (or an fp32 graph) cannot build for it (measured); ask for "SM75" explicitly for fp16 engines.
    targets = list(requested) or [arch for arch in supported if arch != "SM75"]
    unknown = sorted(set(targets) - set(supported))
    if unknown:
        raise CompileError(f"{trt.describe()} cannot target {unknown}; it supports {supported} (datacenter GPUs such "
                           "as H100/H200, SM90, need full TensorRT)")
    config.num_compute_capabilities = len(targets)
    for index, name in enumerate(targets):
        config.set_compute_capability(trt.module.ComputeCapability.__members__[name], index)
    return targets


def _attach_timing_cache(trt: TensorRT, config: Any, path: Path | None) -> dict[str, Any]:
    if path is None:
        return {"used": False, "reason": "disabled (timing_cache = \"\")"}
    if not trt.has_timing_cache:
        return {"used": False, "reason": f"{trt.flavour} has no timing cache (its timing cache API is a no-op)"}
    loaded = path.read_bytes() if path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(loaded), False)
    return {"used": True, "path": str(path), "loaded_bytes": len(loaded), "hit": bool(loaded)}


def inspect_engine(plan_path: Path) -> dict[str, Any] | str:
    """Layer precisions from the engine inspector, on the plan opened by the TensorRT runtime (with its metadata
    beside it); needs a GPU it was built for (a note says so otherwise)."""
    from engineforge.engines import load_engine

    try:
        engine = load_engine(plan_path, RUNTIME, 0)
    except NoGpuError:
        return "engine inspector not run: deserializing an engine needs a GPU (see the network's declared types)"
    except EngineLoadError as exc:
        return f"engine inspector not run: {str(exc)[:200]}"
    info = engine.layer_information()  # type: ignore[attr-defined]
    counts: Counter[str] = Counter()
    for layer in info.get("Layers", []):
        if isinstance(layer, dict):
            for out in layer.get("Outputs", [])[:1]:
                counts[str(out.get("Format/Datatype", "?")).split()[-1]] += 1
    return {"layers": len(info.get("Layers", [])), "output_precision_of_layers": dict(counts)}

