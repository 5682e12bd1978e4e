"""What a checkpoint is for: read from `architectures` and sentence-transformers files, or forced with `--task`.

- text-classification: `*ForSequenceClassification`; the engine returns logits [batch, labels].
- token-classification: `*ForTokenClassification` (NER); the engine returns per-token logits [batch, seq, tags]
  over IOB2 tags (`B-PRODUCT`, `I-PRODUCT`, `O`); quality is entity-level F1 and per-token agreement.
- embeddings: a bare encoder (`BertModel`, `MPNetModel`, ...) or a sentence-transformers directory; the engine
  returns pooled (mean or CLS, as `1_Pooling/config.json` says), optionally L2-normalized, embeddings
  [batch, hidden]: the pooling is part of the exported graph, so every runtime serves the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engineforge.engines.engine_spec import EMBEDDINGS, TASKS, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION
from engineforge.engines.pooling import POOLING_MODES, Pooling, sentence_embedder
from engineforge.errors import CheckpointError, UnsupportedArchitectureError

HEADS = {TEXT_CLASSIFICATION: "ForSequenceClassification", TOKEN_CLASSIFICATION: "ForTokenClassification"}
_NORMALIZE = "sentence_transformers.models.Normalize"
__all__ = ["POOLING_MODES", "Pooling", "detect_task", "embedding_model", "read_pooling"]


def detect_task(path: Path, config: dict[str, Any], forced: str | None = None) -> str:
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else ""
    sentence_transformers = (path / "modules.json").is_file()
    if forced is not None:
        if forced not in TASKS:
            raise UnsupportedArchitectureError(f"task {forced!r} is not supported; supported tasks: {', '.join(TASKS)}")
        if forced in HEADS and not architecture.endswith(HEADS[forced]):
            raise UnsupportedArchitectureError(
                f"--task {forced} needs a *{HEADS[forced]} checkpoint; {path} holds "
                f"{architecture or 'no architecture'} (fine-tune that head first, or use --task {EMBEDDINGS})")
        return forced
    for task, head in HEADS.items():
        if architecture.endswith(head):
            return task
    if sentence_transformers or architecture.endswith("Model"):
        return EMBEDDINGS
    raise UnsupportedArchitectureError(
        f"architecture {architecture or '(none)'} in {path / 'config.json'} is neither a sequence or token "
        f"classifier nor a bare encoder; supported tasks: {TEXT_CLASSIFICATION} (*ForSequenceClassification), "
        f"{TOKEN_CLASSIFICATION} (*ForTokenClassification), {EMBEDDINGS} (a bare encoder or a "
        "sentence-transformers directory); force one with --task")


def read_pooling(path: Path) -> Pooling:
    """Pooling from sentence-transformers' `1_Pooling/config.json` and `modules.json` when present."""
    modules_file, pooling_file = path / "modules.json", path / "1_Pooling" / "config.json"
    if not pooling_file.is_file():
        return Pooling()
    try:
        pooling = json.loads(pooling_file.read_text())
        modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{pooling_file} or {modules_file} is not valid JSON ({exc}): re-save the model") from exc
    if pooling.get("pooling_mode_cls_token"):
        mode = "cls"
    elif pooling.get("pooling_mode_mean_tokens"):
        mode = "mean"
    else:
        used = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
        raise UnsupportedArchitectureError(f"{pooling_file} asks for pooling {used}; engineforge serves mean or CLS "
                                           "pooling")
    normalize = any(isinstance(m, dict) and m.get("type") == _NORMALIZE for m in modules)
    return Pooling(mode, normalize, f"{pooling_file.relative_to(path)}"
                                    + (" + modules.json Normalize" if normalize else ""))


def embedding_model(encoder: Any, pooling: Pooling) -> Any:
    """`encoder` (an AutoModel) with pooling on top; `.logits` of its output is the embedding. The module lives in
    the engine layer because the torch-bnb engine wraps its 4-bit encoder in the very same one."""
    return sentence_embedder(encoder, pooling)
