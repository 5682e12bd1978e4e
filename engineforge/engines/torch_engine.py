"""PyTorch engines: an in-memory model (the fp32 reference, the eager baseline) and the `torch-bnb` runtime, a
bitsandbytes 4-bit model saved with `save_pretrained` (no ONNX path exists).

A torch-bnb directory is reloaded with the class of its task, read from `architectures` in its config.json:
`*ForSequenceClassification`, `*ForTokenClassification`, or a bare encoder (embeddings) wrapped in the pooling
its `pooling.json` names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engineforge.errors import EngineLoadError

from .pooling import load_pooling, sentence_embedder
from .registry import MODEL_DIRECTORY, TOKEN_INPUTS, register_runtime

TORCH_BNB = "torch-bnb"


class TorchEngine:
    """Runs a transformers model in inference mode on numpy feeds, with `threads` intra-op threads (0 = torch's
    current setting). Torch's thread count is process-wide: it is set for each call and restored after, so
    opening an engine inside a build does not change the threads of everything else in that process."""

    def __init__(self, model: Any, input_names: Sequence[str], runtime: str = "torch", threads: int = 0,
                 output_name: str = "logits") -> None:
        import torch

        self.model = model.eval()
        self.runtime = runtime
        self.threads = threads
        self.input_names = tuple(input_names)
        self.output_names = (output_name,)  # "embeddings" for an embedder, as its ONNX graph names it
        self._torch = torch

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        previous = torch.get_num_threads()
        if self.threads and self.threads != previous:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                # Optional inputs (token_type_ids) may be absent: the model then uses its own default.
                tensors = {n: torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names if n in feeds}
                return self.model(**tensors).logits.float().numpy()
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)

    def settings(self) -> dict[str, Any]:
        attention = getattr(self.model.config, "_attn_implementation", None)
        return {"runtime": self.runtime, "torch_threads": self.threads or self._torch.get_num_threads(),
                "attention": attention}


def forward_input_names(model: Any) -> tuple[str, ...]:
    """The token inputs the model's forward takes, in BERT's order; token_type_ids only where the model tells types
    apart (DeBERTa-v3's type_vocab_size 0 ignores them, and the build's tokenizer drops them: checkpoint.py)."""
    import inspect

    encoder = getattr(model, "wrapped", model)  # an embedder's own forward always lists token_type_ids
    accepted = inspect.signature(encoder.forward).parameters
    names = [n for n in TOKEN_INPUTS if n in accepted]
    if "token_type_ids" in names and not getattr(encoder.config, "type_vocab_size", 1):
        names.remove("token_type_ids")
    return tuple(names)


def auto_class(architecture: str) -> Any:
    """The transformers Auto class that rebuilds `architecture` with its head: a classifier, a token classifier,
    or (anything else) the bare encoder an embedder pools."""
    import transformers

    for suffix, name in (("ForSequenceClassification", "AutoModelForSequenceClassification"),
                         ("ForTokenClassification", "AutoModelForTokenClassification")):
        if architecture.endswith(suffix):
            return getattr(transformers, name)
    return transformers.AutoModel


def _architecture(path: Path) -> str:
    import json

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise EngineLoadError(f"{path / 'config.json'}: unreadable ({exc}); rebuild the engine") from exc
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if not architectures:
        raise EngineLoadError(f"{path / 'config.json'}: names no architecture, so the model's head (classifier, "
                              "token classifier or bare encoder) is unknown; rebuild the engine")
    return str(architectures[0])


@register_runtime(TORCH_BNB, model_kind=MODEL_DIRECTORY, description="PyTorch with bitsandbytes 4-bit layers",
                  bundle_file="model", package="bitsandbytes")
def load_torch_bnb(path: Path, threads: int) -> TorchEngine:
    from transformers.utils import logging as hf_logging

    if not (path / "config.json").is_file():
        raise EngineLoadError(f"{path}: no config.json; a torch-bnb engine is a save_pretrained directory")
    hf_logging.disable_progress_bar()  # weight-loading bars would flood the server log
    auto = auto_class(_architecture(path))
    # Read first: an embedder without it could only be served with a guessed pooling.
    pooling = load_pooling(path) if auto.__name__ == "AutoModel" else None
    try:
        model = auto.from_pretrained(str(path), device_map="cpu", local_files_only=True)
    except Exception as exc:
        raise EngineLoadError(f"{path}: cannot load the 4-bit model ({type(exc).__name__}: {exc}); "
                              "serving torch-bnb needs bitsandbytes and accelerate installed") from exc
    if getattr(model.config, "quantization_config", None) is None:
        raise EngineLoadError(f"{path}: config.json has no quantization_config; this is not a bitsandbytes "
                              "model (serve an fp32 model through ONNX instead)")
    names = forward_input_names(model)
    if pooling is None:
        return TorchEngine(model, names, runtime=TORCH_BNB, threads=threads)
    return TorchEngine(sentence_embedder(model.eval(), pooling), names, runtime=TORCH_BNB, threads=threads,
                       output_name="embeddings")
