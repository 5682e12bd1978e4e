"""Tiny random BERT graphs for each task (classifier logits, per-token logits, pooled embeddings), exported to
ONNX in a second from a config, plus token feeds of mixed lengths: what the length-bucket tests pad."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

TASK_OUTPUTS = {"text-classification": "logits", "token-classification": "logits", "embeddings": "embeddings"}
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
VOCAB = 1000


def _model(task: str) -> object:
    import torch
    import transformers

    from engineforge.engines.pooling import Pooling, sentence_embedder

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128, num_labels=5)
    if task == "text-classification":
        model = transformers.BertForSequenceClassification(config)
        with torch.no_grad():
            model.classifier.weight.mul_(40.0)  # spread the logits, as a trained head does
    elif task == "token-classification":
        model = transformers.BertForTokenClassification(config)
        with torch.no_grad():
            model.classifier.weight.mul_(40.0)
    else:
        model = sentence_embedder(transformers.BertModel(config, add_pooling_layer=False), Pooling("mean", True))

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    return Logits().eval()


def export_task_graph(path: Path, task: str) -> Path:
    """A random tiny BERT for `task` as ONNX at `path`, dynamic batch and sequence dims."""
    import torch

    ids = torch.randint(5, VOCAB, (2, 8), dtype=torch.long)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    output = TASK_OUTPUTS[task]
    dynamic[output] = {0: "batch", 1: "sequence"} if task == "token-classification" else {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_model(task), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
                          input_names=list(INPUT_NAMES), output_names=[output], dynamic_axes=dynamic,
                          opset_version=17, dynamo=False)
    return path


def mixed_feeds(lengths: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """One call of rows with these token counts, right-padded to the longest with mask 0 (a merged batch)."""
    rng = np.random.default_rng(seed)
    longest = max(lengths)
    ids = np.zeros((len(lengths), longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(5, VOCAB, size=n)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
