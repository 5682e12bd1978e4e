"""Package the final engine as a bundle (model.onnx or model/ + engine.json + tokenizer/) and publish it.

ONNX runtimes (onnxruntime, openvino) ship the last ONNX file as `model.onnx`; torch-bnb ships the
4-bit model's `save_pretrained` directory as `model/` (bitsandbytes layers cannot be exported to ONNX).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .config import PublishConfig
from .inference import file_mb
from .pipeline import BuildContext, register_step


def engine_model_file(ctx: BuildContext) -> tuple[Path, str] | None:
    """(source, name in the bundle) of the engine the steps produced; None if no step made one yet."""
    if ctx.runtime == "torch-bnb":
        # Copy the directory bnb_4bit saved before any forward pass rather than re-saving ctx.model: bitsandbytes
        # repacks weights for its CPU kernel on first use (bf16 absmax), which makes a later save lossy, and
        # transformers 5.24 cannot save a model that was loaded pre-quantized at all (NotImplementedError).
        return (ctx.model_dir, "model") if ctx.model_dir is not None else None
    return (ctx.onnx_path, "model.onnx") if ctx.onnx_path is not None else None


def ensure_bundle(ctx: BuildContext) -> None:
    """Write the engine bundle once, from whatever engine the last step produced."""
    source = engine_model_file(ctx)
    if ctx.bundle_dir is not None or source is None:
        return
    from engineforge.serve.engine_spec import EngineSpec

    bundle = ctx.config.output_dir / "engine"
    bundle.mkdir(parents=True, exist_ok=True)
    path, model_file = source
    if path.is_dir():
        shutil.copytree(path, bundle / model_file, dirs_exist_ok=True)
    else:
        shutil.copyfile(path, bundle / model_file)
    ctx.tokenizer.save_pretrained(str(bundle / "tokenizer"))
    from .inference import model_input_names

    spec = EngineSpec(
        runtime=ctx.runtime,
        model_file=model_file,
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
    assert ctx.bundle_dir is not None, "publish runs after export (or after bnb_4bit)"
    name = config.model_name or default_model_name(ctx)
    published = publish_engine(
        ctx.bundle_dir, config.repo_dir, name, max_batch_size=config.max_batch_size,
        max_queue_delay_us=config.max_queue_delay_us, instances=config.instances,
    )
    ctx.published = {"repo_dir": str(config.repo_dir), "model_name": name, "version": published.version}
    return {"repo_dir": str(config.repo_dir), "model": name, "version": published.version,
            "engine_mb": bundle_engine_mb(ctx.bundle_dir)}


def bundle_engine_mb(bundle_dir: Path) -> float:
    """Size of the bundle's engine, whatever engine.json names (model.onnx or the model/ directory)."""
    from engineforge.serve.engine_spec import EngineSpec

    return file_mb(bundle_dir / EngineSpec.load(bundle_dir).model_file)


def default_model_name(ctx: BuildContext) -> str:
    raw = ctx.config.checkpoint.resolve().name.lower()
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in raw).strip("_-")
    return cleaned or "model"
