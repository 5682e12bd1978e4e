"""The engine bundle a build ships: the engine (model.onnx, model/ or model.plan), engine.json, tokenizer/.

Which file ships, and under which name, is the serving runtime's fact (`Runtime.bundle_file`, see
BuildContext.engine_source): ONNX runtimes (onnxruntime, openvino) ship the last ONNX file as `model.onnx`;
torch-bnb ships the 4-bit model's `save_pretrained` directory as `model/` (bitsandbytes layers cannot be exported
to ONNX); tensorrt ships the plan as `model.plan`, its metadata in engine.json's "tensorrt" section.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from engineforge.defaults import TOKENIZER_DIRNAME
from engineforge.engines import model_input_names
from engineforge.engines.engine_spec import EngineSpec

from .context import BuildContext
from .files import file_mb


def ensure_bundle(ctx: BuildContext) -> Path | None:
    """Write the engine bundle once, from whatever engine the last step produced; None while there is none."""
    source = ctx.engine_source()
    if ctx.bundle_dir is not None or source is None:
        return ctx.bundle_dir
    bundle = ctx.config.output_dir / "engine"
    bundle.mkdir(parents=True, exist_ok=True)
    path, model_file = source
    if path.is_dir():
        # The directory bnb_4bit saved before any forward pass, not a re-save of the model: bitsandbytes
        # repacks weights for its CPU kernel on first use (bf16 absmax), which makes a later save lossy.
        shutil.copytree(path, bundle / model_file, dirs_exist_ok=True)
    else:
        shutil.copyfile(path, bundle / model_file)
    ctx.tokenizer.save_pretrained(str(bundle / TOKENIZER_DIRNAME))
    EngineSpec(
        runtime=ctx.runtime,
        model_file=model_file,
        input_names=tuple(model_input_names(ctx.tokenizer)),
        output_name="embeddings" if ctx.is_embedding else "logits",
        labels=tuple(ctx.labels),
        task=ctx.checkpoint.task,
        embedding_dim=ctx.checkpoint.hidden_size if ctx.is_embedding else None,
        pooling=ctx.checkpoint.pooling.to_dict() if ctx.checkpoint.pooling else None,
        max_sequence_length=ctx.config.max_sequence_length,
        max_position_embeddings=ctx.checkpoint.max_position_embeddings,
        precision=ctx.precision,
        intra_op_threads=ctx.serving_threads,
        length_buckets=ctx.length_buckets,
        bucket_max_batch=ctx.bucket_max_batch,
        serving_plan=ctx.serving_plan,
        source_checkpoint=str(ctx.config.checkpoint),
        build_id=ctx.build_id,
        vocab_size=ctx.checkpoint.vocab_size,
        type_vocab_size=bundle_type_vocab_size(ctx.reference_model.config, model_input_names(ctx.tokenizer)),
        tensorrt=ctx.tensorrt_metadata,
        traffic_profile=ctx.traffic_profile.to_dict() if ctx.traffic_profile else None,
    ).save(bundle)
    ctx.bundle_dir = bundle
    return bundle


def bundle_type_vocab_size(model_config: object, input_names: list[str]) -> int | None:
    """The token types the engine tells apart, for engine.json: the serving side refuses token_type_ids outside
    [0, it). An engine without a token_type_ids input tells apart one (0; any other value would be ignored
    silently); None only when a model that takes them does not say how many."""
    if "token_type_ids" not in input_names:
        return 1
    return getattr(model_config, "type_vocab_size", None) or None  # 0 never gets here: checkpoint drops the input


def bundle_engine_mb(bundle_dir: Path) -> float:
    """Size of the bundle's engine, whatever engine.json names (model.onnx or the model/ directory)."""
    return file_mb(bundle_dir / EngineSpec.load(bundle_dir).model_file)


def default_model_name(checkpoint: Path) -> str:
    """A servable model name from the checkpoint directory's name."""
    raw = Path(checkpoint).resolve().name.lower()
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in raw).strip("_-")
    return cleaned or "model"
