"""Load and check an input checkpoint: a Hugging Face `*ForSequenceClassification` directory, or a bare encoder /
sentence-transformers directory for embeddings (build/tasks.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.engines.engine_spec import EMBEDDINGS, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION
from engineforge.errors import CheckpointError, UnsupportedArchitectureError

from .families import SUPPORTED_MODEL_TYPES, config_value, family_for, usable_positions
from .files import sha256_file
from .tasks import Pooling, detect_task, embedding_model, read_pooling

__all__ = ["SUPPORTED_MODEL_TYPES", "CheckpointInfo", "inspect_checkpoint", "load_checkpoint", "load_tokenizer",
           "read_checkpoint_config"]
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model")


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    model_type: str
    architecture: str
    labels: tuple[str, ...]
    weights_file: Path
    weights_sha256: str
    num_heads: int
    hidden_size: int
    max_position_embeddings: int
    vocab_size: int | None = None
    task: str = TEXT_CLASSIFICATION
    pooling: Pooling | None = None  # embeddings only

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "model_type": self.model_type,
            "architecture": self.architecture,
            "labels": list(self.labels),
            "weights_file": self.weights_file.name,
            "weights_sha256": self.weights_sha256,
            "num_heads": self.num_heads,
            "hidden_size": self.hidden_size,
            "max_position_embeddings": self.max_position_embeddings,
            "vocab_size": self.vocab_size,
            "task": self.task,
            "pooling": self.pooling.to_dict() if self.pooling else None,
        }


def read_checkpoint_config(path: Path) -> dict[str, Any]:
    """The checkpoint's config.json, or CheckpointError saying why this is not a checkpoint directory. The first
    thing every build checks: nothing else is worth saying about a path that holds no checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a file; pass the directory that holds config.json")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} is not a Hugging Face checkpoint: it has no config.json (pass the directory "
                              "that save_pretrained wrote)")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_file} is not valid JSON ({exc}): the checkpoint is corrupt") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} does not hold a JSON object: the checkpoint is corrupt")
    family_for(config.get("model_type"), str(config_file))
    return config


def inspect_checkpoint(path: Path, task: str | None = None) -> CheckpointInfo:
    """Check the directory without loading weights; every problem names the file and the fix."""
    path = Path(path)
    config = read_checkpoint_config(path)
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else ""
    task = detect_task(path, config, task)

    weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(
            f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): save the tokenizer with the model "
            "(tokenizer.save_pretrained(dir))"
        )

    id2label = config.get("id2label") or {}
    num_labels = len(id2label) or int(config.get("num_labels", 2))
    labels = tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(num_labels))
    if task == EMBEDDINGS:
        labels = ()
    return CheckpointInfo(
        path=path,
        model_type=model_type,
        architecture=architecture,
        labels=labels,
        weights_file=weights,
        weights_sha256=sha256_file(weights),
        num_heads=config_value(config, "num_attention_heads"),
        hidden_size=config_value(config, "hidden_size"),
        max_position_embeddings=usable_positions(config),
        vocab_size=int(config["vocab_size"]) if "vocab_size" in config else None,
        task=task,
        pooling=read_pooling(path) if task == EMBEDDINGS else None,
    )


def load_checkpoint(path: Path, task: str | None = None) -> tuple[CheckpointInfo, Any, Any]:
    """Return (info, fp32 model in eval mode with eager attention, fast tokenizer). For embeddings the model is
    the encoder with its pooling (`tasks.embedding_model`). The tokenizer is loaded and checked against the
    embedding table before the weights, so a mismatched pair is refused before any work."""
    info = inspect_checkpoint(path, task)
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # build steps print their own progress

    tokenizer = load_tokenizer(info)
    try:
        # Eager attention exports the plain MatMul/Softmax pattern ORT's attention fusion recognises.
        auto = {EMBEDDINGS: AutoModel, TOKEN_CLASSIFICATION: AutoModelForTokenClassification}.get(
            info.task, AutoModelForSequenceClassification)
        model, loading = auto.from_pretrained(str(path), attn_implementation="eager", local_files_only=True,
                                              output_loading_info=True)
    except Exception as exc:  # safetensors/torch raise many types for truncated or garbled files
        raise CheckpointError(
            f"could not load weights from {info.weights_file}: {type(exc).__name__}: {exc}. "
            "The file is corrupt or does not match config.json; re-save the checkpoint"
        ) from exc
    rows = model.get_input_embeddings().num_embeddings  # the table itself: config.json may lack vocab_size
    check_vocabulary(tokenizer, rows, f"{type(model).__name__}'s input embeddings", path)
    untrained = untrained_weights(loading.get("missing_keys", ()), info.task)
    if untrained:  # transformers' LOAD REPORT table is in build.log; this is what it means for the engine
        progress.info(f"  {', '.join(untrained)} not in {info.weights_file.name}: initialised at random, so the "
                      "engine computes with untrained weights there (transformers' load report is in build.log); "
                      "save the fine-tuned model with save_pretrained")
    model.eval()
    tokenizer.model_input_names = accepted_inputs(model, tokenizer)
    if info.task == EMBEDDINGS and info.pooling is not None:
        model = embedding_model(model, info.pooling)
    return info, model, tokenizer


def load_tokenizer(info: CheckpointInfo) -> Any:
    """The checkpoint's fast tokenizer, checked against config.json's vocabulary size (no weights loaded)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(info.path), use_fast=True, local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"could not load the tokenizer in {info.path}: {type(exc).__name__}: {exc}") from exc
    if info.vocab_size is not None:
        check_vocabulary(tokenizer, info.vocab_size, f"config.json vocab_size {info.vocab_size}", info.path)
    return tokenizer


def check_vocabulary(tokenizer: Any, rows: int, table: str, path: Path) -> None:
    """Refuse a tokenizer that can emit ids the embedding table has no row for (export would fail with
    `IndexError: index out of range in self`, serving would crash). Added tokens count: they get ids after the
    base vocabulary, and adding them without `resize_token_embeddings` is the usual cause."""
    vocabulary = tokenizer.get_vocab()  # the full vocabulary, added and special tokens included
    beyond = sorted((i, token) for token, i in vocabulary.items() if i >= rows)
    if not beyond:
        return
    highest = beyond[-1][0]
    shown = ", ".join(f"{i} ({token!r})" for i, token in beyond[:5])
    more = f" and {len(beyond) - 5} more" if len(beyond) > 5 else ""
    raise CheckpointError(
        f"the tokenizer in {path} has token ids up to {highest} but the model's embedding table has {rows} rows "
        f"({table}, ids 0-{rows - 1}): out of range are {shown}{more}. Either the "
        "tokens were added without growing the model (call model.resize_token_embeddings(len(tokenizer)), "
        "fine-tune so the new rows learn something, and save model and tokenizer together), or this is another "
        "model's tokenizer (save the checkpoint with the tokenizer it was trained with)")


def untrained_weights(missing: Any, task: str) -> list[str]:
    """Modules (`classifier.*`) whose weights the checkpoint lacks, so transformers initialised them at random.
    An embedder's pooler is not among them: the engine pools the last hidden state and never runs it."""
    keys = [k for k in missing if not (task == EMBEDDINGS and "pooler" in k.split("."))]
    return sorted({f"{k.rsplit('.', 1)[0]}.*" if "." in k else k for k in keys})


def accepted_inputs(model: Any, tokenizer: Any) -> list[str]:
    """The tokenizer's outputs this model uses: DistilBERT, MPNet and ModernBERT take no token_type_ids, and
    DeBERTa-v3 (type_vocab_size 0) ignores them. Every later step, the engine and the served tokenizer
    follow this list."""
    import inspect

    parameters = inspect.signature(model.forward).parameters
    names = [n for n in tokenizer.model_input_names if n in parameters]
    if "token_type_ids" in names and not getattr(model.config, "type_vocab_size", 1):
        names.remove("token_type_ids")
    if "input_ids" not in names or "attention_mask" not in parameters:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}.forward takes {sorted(parameters)}; engineforge needs input_ids and "
            "attention_mask")
    if "attention_mask" not in names:
        names.insert(1, "attention_mask")
    return names
