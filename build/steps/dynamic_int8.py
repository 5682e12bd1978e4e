"""`dynamic_int8`: ONNX Runtime dynamic int8 (int8 weights, activations quantized per batch at run time)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import ONNX_GRAPH, PORTABLE_ONNX, STAGE_ONNX_QUANTIZE, StepConfig, require
from ..context import BuildContext
from ..files import file_mb
from ..step_output import StepOutput
from ..step_registry import register_step


@dataclass(frozen=True)
class DynamicInt8Config(StepConfig):
    """ONNX Runtime dynamic int8: int8 weights, activations quantized on the fly per batch."""

    step_type: ClassVar[str] = "dynamic_int8"
    stage: ClassVar[int] = STAGE_ONNX_QUANTIZE
    requires = frozenset({ONNX_GRAPH})
    provides = frozenset({ONNX_GRAPH})
    removes = frozenset({PORTABLE_ONNX})
    removes_reason = "quantized into ONNX Runtime's dynamic int8 ops (MatMulInteger), which TensorRT does not run"

    per_channel: bool = True
    # QInt8 weights are ~2x faster than QUInt8 on x86 VNNI (measured, FIELD-NOTES).
    weight_type: str = "int8"
    reduce_range: bool = False
    # Op types to quantize; MatMul carries ~all of BERT's compute, Gather would shrink embeddings only.
    op_types: tuple[str, ...] = ("MatMul", "Attention")

    def __post_init__(self) -> None:
        require(self.weight_type in ("int8", "uint8"),
                f"dynamic_int8.weight_type='{self.weight_type}': use 'int8' (fast on x86) or 'uint8'")
        require(len(self.op_types) > 0, "dynamic_int8.op_types is empty: name at least 'MatMul'")
        object.__setattr__(self, "op_types", tuple(self.op_types))


@register_step(DynamicInt8Config)
def quantize_dynamic_int8(ctx: BuildContext, config: DynamicInt8Config) -> StepOutput:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = ctx.onnx_path
    path = ctx.work_dir / "model.int8.onnx"
    quantize_dynamic(
        str(source), str(path),
        weight_type=QuantType.QInt8 if config.weight_type == "int8" else QuantType.QUInt8,
        per_channel=config.per_channel, reduce_range=config.reduce_range, op_types_to_quantize=list(config.op_types),
        # Fused graphs carry ops (Attention, SkipLayerNorm) whose weight types the quantizer cannot infer.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    model = onnx.load(str(path), load_external_data=False)
    quantized = sum(1 for n in model.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul",
                                                                 "QAttention", "DynamicQuantizeLinear"))
    return StepOutput(onnx_path=path, precision=f"int8-dynamic{'-per-channel' if config.per_channel else ''}",
                      details={"file": path.name, "size_mb": file_mb(path), "size_before_mb": file_mb(source),
                               "quantized_nodes": quantized, "weight_type": config.weight_type,
                               "per_channel": config.per_channel})
