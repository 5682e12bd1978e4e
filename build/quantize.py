"""ONNX quantization steps. Dynamic int8: int8 weights, activations quantized per batch at run time."""

from __future__ import annotations

from typing import Any

from .config import DynamicInt8Config
from .inference import file_mb
from .pipeline import BuildContext, register_step


@register_step(DynamicInt8Config)
def quantize_dynamic_int8(ctx: BuildContext, config: DynamicInt8Config) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    assert ctx.onnx_path is not None, "dynamic_int8 runs after export"
    path = ctx.work_dir / "model.int8.onnx"
    before = file_mb(ctx.onnx_path)
    quantize_dynamic(
        str(ctx.onnx_path), str(path),
        weight_type=QuantType.QInt8 if config.weight_type == "int8" else QuantType.QUInt8,
        per_channel=config.per_channel, reduce_range=config.reduce_range, op_types_to_quantize=list(config.op_types),
        # Fused graphs carry ops (Attention, SkipLayerNorm) whose weight types the quantizer cannot infer.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    model = onnx.load(str(path), load_external_data=False)
    quantized = sum(1 for n in model.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul",
                                                                 "QAttention", "DynamicQuantizeLinear"))
    ctx.onnx_path = path
    ctx.precision = f"int8-dynamic{'-per-channel' if config.per_channel else ''}"
    return {"file": path.name, "size_mb": file_mb(path), "size_before_mb": before,
            "quantized_nodes": quantized, "weight_type": config.weight_type, "per_channel": config.per_channel}
