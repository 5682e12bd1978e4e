"""Checks on a Q/DQ int8 file: what it holds, and whether the int8 engine runtimes accept it.

ONNX Runtime answers every eval pass of the static_int8 step already; OpenVINO (CPU) and TensorRT
(GPU, here only its parser: building needs no GPU but running does) are the runtimes a Q/DQ file is
for, so a graph either of them cannot read fails the build instead of a later deployment.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from engineforge.errors import CompileError, EngineLoadError, ValidationError

_HOW_TO_SKIP = "set check_engines = false in the static_int8 step if that runtime will not serve it"


def qdq_summary(path: Path) -> dict[str, Any]:
    """Counts of Q/DQ nodes and the activation zero-point types (INT8 with all zeros = symmetric int8)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    return {"quantize_linear": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
            "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
            "activation_types": sorted({onnx.TensorProto.DataType.Name(z.data_type) for z in zero_points}),
            "symmetric_activations": all(not numpy_helper.to_array(z).any() for z in zero_points)}


def is_symmetric_int8(summary: dict[str, Any]) -> bool:
    """Q/DQ activations TensorRT accepts: INT8 with all-zero zero points."""
    return summary["activation_types"] == ["INT8"] and summary["symmetric_activations"]


def check_openvino(path: Path, threads: int) -> str:
    if importlib.util.find_spec("openvino") is None:
        return "skipped: openvino not installed"
    from engineforge.engines import load_engine

    try:
        load_engine(path, "openvino", threads)  # read_model + compile_model(CPU), as served
    except EngineLoadError as exc:
        raise ValidationError(f"OpenVINO cannot load the static int8 model {path.name}: {str(exc)[:300]}; "
                              + _HOW_TO_SKIP) from exc
    return "ok: read_model + compile_model(CPU)"


def check_tensorrt(path: Path, symmetric_int8: bool) -> str:
    """Parse with TensorRT's ONNX parser, where a TensorRT (or TensorRT-RTX) package is installed."""
    if not symmetric_int8:
        return "skipped: TensorRT rejects uint8 Q/DQ activations (use activation_type = 'int8')"
    from engineforge.engines.tensorrt_api import find_tensorrt

    from ..compile.tensorrt_compile import parse_onnx

    trt = find_tensorrt()
    if trt is None:
        return "skipped: tensorrt not installed"
    try:
        parse_onnx(trt, path)
    except CompileError as exc:
        raise ValidationError(f"TensorRT's parser rejects the static int8 model {path.name}: {str(exc)[:400]}; "
                              + _HOW_TO_SKIP) from exc
    return f"ok: parsed by {trt.module.__name__} {trt.version}"


def check_engines(path: Path, threads: int) -> dict[str, str]:
    summary = qdq_summary(path)
    return {"openvino": check_openvino(path, threads), "tensorrt": check_tensorrt(path, is_symmetric_int8(summary))}
