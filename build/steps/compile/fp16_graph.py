"""A strongly typed fp16 ONNX graph for TensorRT: fp16 weights and activations, numerically touchy ops in fp32.

TensorRT 10/11 takes precision from the graph (strongly typed networks) instead of builder flags, so the
fp16 engine is whatever this file says. LayerNorm, Softmax, reductions and powers stay fp32 (their sums
overflow or lose the small differences fp16 cannot hold); inputs and outputs keep their types, so clients
send int64 ids and read fp32 logits either way.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

KEEP_FP32_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "Softmax", "ReduceMean", "ReduceSum",
                 "ReduceMax", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt", "Reciprocal", "Exp", "Log")


def convert_to_fp16(source: Path, target: Path, keep_fp32_ops: tuple[str, ...] = KEEP_FP32_OPS) -> dict[str, Any]:
    """Write the fp16 version of `source` to `target`; returns op counts by type that stayed fp32."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(source))
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_ops))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    onnx.save(converted, str(target))
    kept = Counter(n.op_type for n in model.graph.node if n.op_type in keep_fp32_ops)
    return {"kept_fp32_ops": dict(sorted(kept.items())),
            "cast_nodes_added": sum(n.op_type == "Cast" for n in converted.graph.node)
            - sum(n.op_type == "Cast" for n in model.graph.node)}
