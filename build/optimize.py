"""Graph-optimize step: ONNX Runtime's transformer fusions (Attention, SkipLayerNorm, BiasGelu, ...)."""

from __future__ import annotations

from typing import Any

from engineforge.errors import ConfigError

from .config import GraphOptimizeConfig
from .export import check_against_torch
from .inference import file_mb
from .pipeline import BuildContext, register_step

# Fusions that must appear for the step to have done its job on a BERT graph.
_KEY_FUSIONS = ("Attention", "SkipLayerNormalization")


def fusion_shape(ctx: BuildContext) -> tuple[int, int]:
    """num_heads / hidden_size for ORT's Attention fusion, read from the model that was exported.

    ORT applies the given num_heads to every layer (HF reshapes with -1 heads) and fuses only when
    hidden_size == num_heads x head_dim, so after head pruning both must be the *pruned* values;
    auto-detection (0, 0) fuses nothing and the unpruned values fuse into wrong Attention nodes.
    """
    from .prune_structure import attention_fusion_shape

    try:
        return attention_fusion_shape(ctx.model)
    except (ConfigError, AttributeError, IndexError):  # not a BERT-style module tree: trust the checkpoint
        info = ctx.checkpoint_info
        return info["num_heads"], info.get("attention_hidden_size", info["hidden_size"])


@register_step(GraphOptimizeConfig)
def optimize_graph(ctx: BuildContext, config: GraphOptimizeConfig) -> dict[str, Any]:
    from onnxruntime.transformers.optimizer import optimize_model

    assert ctx.onnx_path is not None, "graph_optimize runs after export"
    num_heads, hidden_size = fusion_shape(ctx)
    optimized = optimize_model(
        str(ctx.onnx_path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
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
            "attention_fusion": {"num_heads": num_heads, "hidden_size": hidden_size},
            "nodes": len(optimized.model.graph.node), "max_abs_diff_vs_torch": float(f"{max_diff:.3g}")}
