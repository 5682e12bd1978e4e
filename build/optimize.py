"""Graph-optimize step: ONNX Runtime's transformer fusions (Attention, SkipLayerNorm, BiasGelu, ...)."""

from __future__ import annotations

from typing import Any

from .config import GraphOptimizeConfig
from .export import check_against_torch
from .inference import file_mb
from .pipeline import BuildContext, register_step

# Fusions that must appear for the step to have done its job on a BERT graph.
_KEY_FUSIONS = ("Attention", "SkipLayerNormalization")


@register_step(GraphOptimizeConfig)
def optimize_graph(ctx: BuildContext, config: GraphOptimizeConfig) -> dict[str, Any]:
    from onnxruntime.transformers.optimizer import optimize_model

    assert ctx.onnx_path is not None, "graph_optimize runs after export"
    info = ctx.checkpoint_info
    # Real head count and width: auto-detection (0, 0) fuses nothing on pruned graphs.
    optimized = optimize_model(
        str(ctx.onnx_path), model_type="bert", num_heads=info["num_heads"], hidden_size=info["hidden_size"],
        opt_level=config.opt_level, use_gpu=False,
    )
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    path = ctx.work_dir / "model.opt.onnx"
    optimized.save_model_to_file(str(path))
    texts = [e.text for e in ctx.eval_examples[:32]] or ["hello world", "where is my parcel?"]
    # Fusions are exact rewrites up to float reassociation: a loose fp32 tolerance catches real bugs.
    max_diff = check_against_torch(ctx, path, texts, 1e-3, "graph-optimized model")
    ctx.onnx_path = path
    missing = [k for k in _KEY_FUSIONS if not fused.get(k)]
    return {"file": path.name, "size_mb": file_mb(path), "fused_ops": fused, "missing_fusions": missing,
            "nodes": len(optimized.model.graph.node), "max_abs_diff_vs_torch": float(f"{max_diff:.3g}")}
