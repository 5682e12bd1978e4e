"""Package the final engine as a bundle (model.onnx + engine.json + tokenizer/) and publish it."""

from __future__ import annotations

import shutil
from typing import Any

from .config import PublishConfig
from .inference import file_mb
from .pipeline import BuildContext, register_step


def ensure_bundle(ctx: BuildContext) -> None:
    """Write the engine bundle once, from whatever ONNX file the last step produced."""
    if ctx.bundle_dir is not None or ctx.onnx_path is None:
        return
    from engineforge.serve.engine_spec import EngineSpec

    bundle = ctx.config.output_dir / "engine"
    bundle.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ctx.onnx_path, bundle / "model.onnx")
    ctx.tokenizer.save_pretrained(str(bundle / "tokenizer"))
    from .inference import model_input_names

    spec = EngineSpec(
        runtime="onnxruntime",
        model_file="model.onnx",
        input_names=tuple(model_input_names(ctx.tokenizer)),
        output_name="logits",
        labels=tuple(ctx.labels),
        max_sequence_length=ctx.config.max_sequence_length,
        max_position_embeddings=ctx.checkpoint_info["max_position_embeddings"],
        precision=ctx.precision,
        intra_op_threads=ctx.config.intra_op_threads,
        source_checkpoint=str(ctx.config.checkpoint),
        build_id=ctx.checkpoint_info["build_id"],
        vocab_size=ctx.checkpoint_info.get("vocab_size"),
    )
    spec.save(bundle / "engine.json")
    ctx.bundle_dir = bundle


@register_step(PublishConfig)
def publish(ctx: BuildContext, config: PublishConfig) -> dict[str, Any]:
    from engineforge.serve.repository import publish_engine

    ensure_bundle(ctx)
    assert ctx.bundle_dir is not None, "publish runs after export"
    name = config.model_name or default_model_name(ctx)
    published = publish_engine(
        ctx.bundle_dir, config.repo_dir, name, max_batch_size=config.max_batch_size,
        max_queue_delay_us=config.max_queue_delay_us, instances=config.instances,
    )
    ctx.published = {"repo_dir": str(config.repo_dir), "model_name": name, "version": published.version}
    return {"repo_dir": str(config.repo_dir), "model": name, "version": published.version,
            "engine_mb": file_mb(ctx.bundle_dir / "model.onnx")}


def default_model_name(ctx: BuildContext) -> str:
    raw = ctx.config.checkpoint.resolve().name.lower()
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in raw).strip("_-")
    return cleaned or "model"
