"""Sentence-embedding pooling on top of a bare encoder: one implementation for the build and the torch-bnb engine.

The ONNX path bakes the pooling into the exported graph; a bitsandbytes engine cannot be exported, so its
`model/` directory carries `pooling.json` and the loader wraps the 4-bit encoder in the same module the build's
fp32 reference uses. Served embeddings are then pooled (and normalized) exactly as validated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge.errors import EngineLoadError

POOLING_MODES = ("mean", "cls")
POOLING_FILE = "pooling.json"


@dataclass(frozen=True)
class Pooling:
    mode: str = "mean"
    normalize: bool = False
    source: str = "default (no sentence-transformers files)"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "normalize": self.normalize, "source": self.source}


def save_pooling(directory: Path, pooling: Pooling) -> Path:
    """Write `pooling.json` into a model directory, so the directory alone says how to pool."""
    path = Path(directory) / POOLING_FILE
    path.write_text(json.dumps(pooling.to_dict(), indent=2) + "\n")
    return path


def load_pooling(directory: Path) -> Pooling:
    """The pooling `save_pooling` wrote; EngineLoadError naming the file when it is missing or unusable."""
    path = Path(directory) / POOLING_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineLoadError(f"{path}: missing; an embedding engine directory says how it pools (rebuild the "
                              "engine)") from None
    except (OSError, ValueError) as exc:
        raise EngineLoadError(f"{path}: unreadable ({exc}); rebuild the engine") from exc
    if not isinstance(data, dict) or data.get("mode") not in POOLING_MODES \
            or not isinstance(data.get("normalize"), bool):
        raise EngineLoadError(f"{path}: expected {{\"mode\": one of {list(POOLING_MODES)}, \"normalize\": true|false}}"
                              f", got {data!r}; rebuild the engine")
    return Pooling(data["mode"], data["normalize"], str(data.get("source", path.name)))


def sentence_embedder(encoder: Any, pooling: Pooling) -> Any:
    """`encoder` (an AutoModel) with pooling on top; `.logits` of its output is the embedding, so every step
    that runs a torch model (export, validation references, distillation) treats it like a classifier."""
    import inspect
    from types import SimpleNamespace

    import torch

    takes_types = "token_type_ids" in inspect.signature(encoder.forward).parameters

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wrapped = encoder
            self.config = encoder.config
            self.pooling = pooling  # also how teacher_student.is_embedding_model recognises it

        @property
        def base_model(self) -> Any:
            return self.wrapped.base_model

        def forward(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None,
                    output_hidden_states: bool = False) -> Any:
            kwargs = {"token_type_ids": token_type_ids} if takes_types and token_type_ids is not None else {}
            out = self.wrapped(input_ids=input_ids, attention_mask=attention_mask,
                               output_hidden_states=output_hidden_states, **kwargs)
            hidden = out.last_hidden_state
            if self.pooling.mode == "cls":
                pooled = hidden[:, 0]
            else:  # mean over real tokens: padding must not change an embedding
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if self.pooling.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
            return SimpleNamespace(logits=pooled, hidden_states=out.hidden_states if output_hidden_states else None)

    return SentenceEmbedder().eval()
