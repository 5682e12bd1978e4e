"""`graph_optimize`: ONNX Runtime's transformer fusions (Attention, SkipLayerNorm, BiasGelu, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import ONNX_GRAPH, PORTABLE_ONNX, STAGE_GRAPH_OPTIMIZE, StepConfig, require
from ..context import BuildContext
from ..families import family_for
from ..files import file_mb
from ..onnx_export import check_against_torch
from ..step_output import StepOutput
from ..step_registry import register_step
from .export import check_texts

# Fusions that must appear for the step to have done its job on a BERT graph.
KEY_FUSIONS = ("Attention", "SkipLayerNormalization")


@dataclass(frozen=True)
class GraphOptimizeConfig(StepConfig):
    """ONNX Runtime transformer graph optimizations (attention / LayerNorm / GELU fusion)."""

    step_type: ClassVar[str] = "graph_optimize"
    stage: ClassVar[int] = STAGE_GRAPH_OPTIMIZE
    requires = frozenset({ONNX_GRAPH})
    provides = frozenset({ONNX_GRAPH})
    removes = frozenset({PORTABLE_ONNX})
    removes_reason = "fused the graph into ONNX Runtime-only ops (com.microsoft Attention, SkipLayerNormalization, ...)"

    # ORT's offline optimization level applied after the fusions: 0 = fusions only, 1 = basic, 2 = extended.
    # 99 (all) would bake CPU-specific layouts into the file, so it is not offered.
    opt_level: int = 1

    def __post_init__(self) -> None:
        require(self.opt_level in (0, 1, 2), f"graph_optimize.opt_level={self.opt_level}: use 0, 1 or 2")


@register_step(GraphOptimizeConfig)
def optimize_graph(ctx: BuildContext, config: GraphOptimizeConfig) -> StepOutput:
    from onnxruntime.transformers.optimizer import optimize_model

    # ORT applies one num_heads to every layer and fuses only when hidden_size == num_heads x head_dim, so
    # after head pruning both must be the pruned values (ctx.attention, which prune updates); auto-detection
    # (0, 0) fuses nothing and the unpruned values fuse into wrong Attention nodes.
    shape = ctx.attention
    optimized = optimize_model(str(ctx.onnx_path), model_type="bert", num_heads=shape.num_heads,
                               hidden_size=shape.hidden_size, opt_level=config.opt_level, use_gpu=False)
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    path = ctx.work_dir / "model.opt.onnx"
    optimized.save_model_to_file(str(path))
    # Fusions are exact rewrites up to float reassociation: a loose fp32 tolerance catches real bugs.
    max_diff = check_against_torch(ctx.model, ctx.tokenizer, path, check_texts(ctx),
                                   max_length=ctx.config.max_sequence_length, threads=ctx.config.intra_op_threads,
                                   atol=1e-3, what="graph-optimized model")
    family = family_for(ctx.checkpoint.model_type)
    # Where the family has no fusable attention, LayerNorm/GELU/bias fusions still apply: a smaller win.
    expected = [k for k in KEY_FUSIONS if k != "Attention" or not family.no_attention_fusion]
    missing = [k for k in expected if not fused.get(k)]
    attention: dict[str, Any] | str = {"num_heads": shape.num_heads, "hidden_size": shape.hidden_size}
    if family.no_attention_fusion:
        attention = f"not available: {family.no_attention_fusion}"
    return StepOutput(onnx_path=path, details={
        "file": path.name, "size_mb": file_mb(path), "fused_ops": fused, "missing_fusions": missing,
        "attention_fusion": attention,
        "nodes": len(optimized.model.graph.node), "max_abs_diff_vs_torch": float(f"{max_diff:.3g}")})
