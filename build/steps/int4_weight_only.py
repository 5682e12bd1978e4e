"""`int4_weight_only`: block-wise int4 weights in ONNX Runtime's `com.microsoft.MatMulNBits`.

Only MatMul nodes with a constant weight are rewritten: after graph_optimize the fused `Attention` nodes
keep their packed QKV weight in fp32, as do Gemm nodes (pooler, classifier) and embeddings. Weight-only
int4 is built for memory-bound LLM decoding; on a small encoder at batch >= 1 x 128 it is compute bound,
and on x86 it has measured slower than dynamic int8 (FIELD-NOTES). For bitsandbytes 4-bit see bnb_4bit.py.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from engineforge.errors import ConfigError

from ..config import ONNX_GRAPH, PORTABLE_ONNX, STAGE_ONNX_QUANTIZE, StepConfig, require
from ..context import BuildContext
from ..files import file_mb
from ..step_output import StepOutput
from ..step_registry import register_step


@dataclass(frozen=True)
class Int4WeightOnlyConfig(StepConfig):
    """ONNX Runtime block-wise int4 weights (MatMulNBits); activations stay fp32."""

    step_type: ClassVar[str] = "int4_weight_only"
    stage: ClassVar[int] = STAGE_ONNX_QUANTIZE
    requires = frozenset({ONNX_GRAPH})
    provides = frozenset({ONNX_GRAPH})
    removes = frozenset({PORTABLE_ONNX})
    removes_reason = "packed the weights into ONNX Runtime's com.microsoft.MatMulNBits op"

    # Weights along K share one scale (and zero point) per block; smaller blocks = more accurate, bigger file.
    block_size: int = 32
    # Symmetric drops the zero points (slightly smaller, slightly less accurate at 4 bits).
    symmetric: bool = False
    # MatMulNBits compute type: None/0 = ORT default, 1 = fp32, 2 = fp16, 3 = bf16, 4 = int8 activations.
    accuracy_level: int | None = None
    # Node names left in fp32 (e.g. a sensitive last layer).
    exclude_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require(
            self.block_size >= 16 and self.block_size & (self.block_size - 1) == 0,
            f"int4_weight_only.block_size={self.block_size}: use a power of two >= 16 (32 default, 128 smaller)",
        )
        require(
            self.accuracy_level is None or self.accuracy_level in (0, 1, 2, 3, 4),
            f"int4_weight_only.accuracy_level={self.accuracy_level}: use 0-4 (4 = int8 compute) or omit it",
        )
        object.__setattr__(self, "exclude_nodes", tuple(self.exclude_nodes))


def _layer_role(node_name: str) -> str:
    """`/model/bert/encoder/layer.3/intermediate/dense/MatMul_Q4` -> `layer.*/intermediate/dense`."""
    role = re.sub(r"layer\.\d+", "layer.*", node_name)
    role = re.sub(r"/MatMul(_Q4)?$", "", role)
    return role[role.index("layer.*"):] if "layer.*" in role else role.strip("/")


def _weight_summary(model: Any) -> tuple[float, dict[str, int]]:
    """(fraction of dense weights now int4, {op type: nodes whose constant weight is still fp32})."""
    import onnx

    def attr(node: Any, name: str) -> int:
        return next(int(a.i) for a in node.attribute if a.name == name)

    inits = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    int4 = sum(attr(n, "K") * attr(n, "N") for n in model.graph.node if n.op_type == "MatMulNBits")
    # Attention holds the packed QKV weight as input 1; MatMul/Gemm their weight as input 1 too.
    fp32_nodes = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Attention")
                  and len(n.input) > 1 and n.input[1] in inits]
    fp32 = sum(int(inits[w].dims[0]) * int(inits[w].dims[1]) for w in {n.input[1] for n in fp32_nodes})
    return round(int4 / max(1, int4 + fp32), 3), dict(Counter(n.op_type for n in fp32_nodes))


@register_step(Int4WeightOnlyConfig)
def quantize_int4_weight_only(ctx: BuildContext, config: Int4WeightOnlyConfig) -> StepOutput:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    path = ctx.work_dir / "model.int4.onnx"
    before = file_mb(ctx.onnx_path)
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(ctx.onnx_path)), bits=4, block_size=config.block_size, is_symmetric=config.symmetric,
        accuracy_level=config.accuracy_level, nodes_to_exclude=list(config.exclude_nodes),
        op_types_to_quantize=("MatMul",),
    )
    # The quantizer logs every node at INFO through its own handler; keep the build output readable.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer.process()
    quantizer.model.save_model_to_file(str(path), use_external_data_format=False)
    model = onnx.load(str(path))
    quantized = [n.name for n in model.graph.node if n.op_type == "MatMulNBits"]
    if not quantized:
        raise ConfigError("int4_weight_only found no MatMul with a constant weight to quantize: "
                          "is the graph already quantized (drop the other quantization step)?")
    int4_fraction, fp32_ops = _weight_summary(model)
    return StepOutput(onnx_path=path, precision="int4-weight-only", details={
        "file": path.name, "size_mb": file_mb(path), "size_before_mb": before,
        "quantized_nodes": len(quantized),
        "quantized_roles": dict(Counter(_layer_role(n) for n in quantized)),
        # Weights that stay fp32: fused Attention (packed QKV) and Gemm (pooler, classifier) are not MatMuls.
        "fp32_weight_ops": fp32_ops, "int4_weight_fraction": int4_fraction,
        "block_size": config.block_size, "symmetric": config.symmetric, "accuracy_level": config.accuracy_level,
    })
