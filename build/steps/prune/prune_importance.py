"""Importance of attention heads and FFN neurons, measured with gradients on representative text.

Heads: Michel et al. 2019 — |∂L/∂ξ_h| for a gate ξ_h = 1 on each head's output. The gate is never
materialised: ∂L/∂ξ_h equals Σ_{tokens, dims of h} context · ∂L/∂context at the input of
the layer's attention output projection, so a tensor hook there gives it. FFN neurons: first-order Taylor
(Molchanov et al. 2019) — |Σ_tokens activation · ∂L/∂activation| at the input of the FFN's output projection, which is
the same gate gradient for a neuron. Both are taken per example (loss summed, examples independent)
and accumulated, so opposite-signed examples do not cancel.

Loss: cross-entropy on the given labels. Unlabelled text uses the teacher's argmax as the label: the
KL to the teacher's soft predictions is at its minimum (zero gradient) while the student still *is*
the teacher, so it would score every unit 0 before any pruning. Embedding models have no classes and the
same problem with any distance to the teacher: their loss is 0.5·|R e|² for fixed Gaussian directions R, the
squared output along random probes (a Fisher-style output sensitivity), which is not constant even for
normalized embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...teacher_student import Batch, is_embedding_model, kd_loss
from .prune_structure import attention_module, encoder_layers, get_path, layout_of

EMBEDDING_PROBES = 16


@dataclass
class Importance:
    heads: list[np.ndarray]  # per layer, one score per head
    ffn: list[np.ndarray]  # per layer, one score per intermediate neuron
    examples: int
    batches: int
    loss: str  # which loss the gradients came from
    mean_loss: float


def measure_importance(model: Any, batches: Sequence[Batch]) -> Importance:
    """Accumulate head and neuron importance over `batches` (teacher logits must be filled in)."""
    import torch

    layout, layers = layout_of(model), encoder_layers(model)
    head_size = [int(attention_module(model, layer).attention_head_size) for layer in layers]
    heads = [torch.zeros(int(getattr(attention_module(model, layer), layout.heads_attr)), dtype=torch.float64)
             for layer in layers]
    ffn = [torch.zeros(int(get_path(layer, layout.ffn_in).out_features), dtype=torch.float64) for layer in layers]
    captured: dict[tuple[str, int], Any] = {}
    handles = []
    for i, layer in enumerate(layers):
        handles.append(get_path(layer, layout.attention_out).register_forward_pre_hook(_keep(captured, ("head", i))))
        handles.append(get_path(layer, layout.ffn_out).register_forward_pre_hook(_keep(captured, ("ffn", i))))
    was_training = model.training
    model.eval()  # no dropout: score the network that will be served
    total_loss, examples, used_labels = 0.0, 0, False
    embedding = is_embedding_model(model)
    try:
        for batch in batches:
            captured.clear()
            logits = model(**batch.inputs).logits
            loss = _embedding_loss(logits) if embedding else _label_loss(logits, batch)
            used_labels = used_labels or (not embedding and bool((batch.labels >= 0).any()))
            keys = list(captured)
            grads = torch.autograd.grad(loss, [captured[k] for k in keys])
            mask = batch.inputs["attention_mask"].unsqueeze(-1).to(logits.dtype)
            for key, grad in zip(keys, grads, strict=True):
                kind, i = key
                contribution = (captured[key] * grad).detach() * mask  # padding tokens contribute nothing
                if kind == "head":
                    b, s, _ = contribution.shape
                    per_example = contribution.view(b, s, -1, head_size[i]).sum(dim=(1, 3))
                    heads[i] += per_example.abs().sum(0).double()
                else:
                    ffn[i] += contribution.sum(1).abs().sum(0).double()
            total_loss += float(loss.detach())
            examples += len(batch.labels)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return Importance(
        heads=[h.numpy() for h in heads], ffn=[f.numpy() for f in ffn], examples=examples,
        batches=len(batches), loss=_loss_name(batches, embedding, used_labels),
        mean_loss=total_loss / max(examples, 1),
    )


def _keep(captured: dict[tuple[str, int], Any], key: tuple[str, int]) -> Any:
    """A forward pre-hook keeping the module's input (a head's context, an FFN activation) under `key`."""
    def hook(_module: Any, args: tuple[Any, ...]) -> None:
        captured[key] = args[0]
    return hook


def _embedding_loss(outputs: Any) -> Any:
    """See the module docstring: the output energy along fixed random directions (the same for every batch)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    probes = torch.randn(EMBEDDING_PROBES, outputs.shape[-1], generator=generator, dtype=outputs.dtype)
    return 0.5 * ((outputs @ probes.T) ** 2).sum() / EMBEDDING_PROBES


def _label_loss(logits: Any, batch: Batch) -> Any:
    """Cross-entropy on the labels, the teacher's argmax where a text has none."""
    import torch

    labels = batch.labels
    if bool((labels < 0).any()):
        labels = torch.where(labels >= 0, labels, batch.teacher.argmax(-1))
    return kd_loss(logits, batch.teacher, labels, alpha=1.0, reduction="sum")


def _loss_name(batches: Sequence[Batch], embedding: bool, used_labels: bool) -> str:
    if embedding:
        return f"embedding energy along {EMBEDDING_PROBES} random directions"
    if used_labels and any(bool((b.labels < 0).any()) for b in batches):
        return "cross-entropy on labels (teacher argmax where unlabelled)"
    return "cross-entropy on labels" if used_labels else "cross-entropy on teacher argmax"


def normalize_per_layer(scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Michel et al.'s layer normalisation (L2 per layer), so one layer's gradient scale cannot
    claim the whole global budget."""
    out = []
    for s in scores:
        norm = float(np.linalg.norm(s))
        out.append(s / norm if norm > 0 else np.full_like(s, 1.0 / max(len(s), 1) ** 0.5))
    return out


def summarize(scores: Sequence[np.ndarray], kept: Sequence[Sequence[int]], with_values: bool) -> list[dict[str, Any]]:
    """Per-layer summary for the build report (full scores only where they are few, i.e. heads)."""
    rows = []
    for i, (s, k) in enumerate(zip(scores, kept, strict=True)):
        removed = sorted(set(range(len(s))) - set(k))
        row: dict[str, Any] = {
            "layer": i, "kept": len(k), "of": len(s),
            "score_mean": float(f"{float(np.mean(s)):.4g}"),
            "kept_score_min": float(f"{float(np.min(s[list(k)])):.4g}"),
            "removed_score_max": float(f"{float(np.max(s[removed])):.4g}") if removed else None,
        }
        if with_values:
            row["scores"] = [float(f"{v:.4g}") for v in s]
            row["kept_indices"] = list(k)
        rows.append(row)
    return rows
