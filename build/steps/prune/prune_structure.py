"""Structured pruning by slicing: per-layer budgets from importance scores, then smaller Linear layers.

transformers 5.x dropped `prune_heads`, so heads and FFN neurons are removed here by slicing the weights of
each encoder layer, at the module paths of its family's `PruneLayout` (`build/families.py`); for BERT:

    attention.self.{query,key,value}  rows of the kept heads      (out_features = heads x head_dim)
    attention.output.dense            columns of the kept heads   (in_features)
    intermediate.dense                rows of the kept neurons
    output.dense                      columns of the kept neurons

Per-layer head counts live on each attention module (`num_attention_heads` / `n_heads`, and the width);
the config only records the layout (`pruned_layout`) because `num_attention_heads` is one number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engineforge.errors import ConfigError

from ...families import PruneLayout, family_for


def get_path(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def set_path(obj: Any, path: str, value: Any) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_path(obj, parent) if parent else obj, name, value)


def layout_of(model: Any) -> PruneLayout:
    family = family_for(getattr(model.config, "model_type", None), "the model's config")
    if family.prune_layout is None:
        raise ConfigError(f"structured pruning does not support {family.name}: {family.no_ffn_pruning}")
    return family.prune_layout


def encoder_layers(model: Any) -> list[Any]:
    """The transformer blocks of a supported encoder."""
    layout = layout_of(model)
    try:
        return list(get_path(model, layout.layers))
    except AttributeError:
        raise ConfigError(f"{type(model).__name__} has no {layout.layers}: its layout is not the one "
                          f"engineforge knows for {model.config.model_type}") from None


def attention_module(model: Any, layer: Any) -> Any:
    return get_path(layer, layout_of(model).attention)


def heads_per_layer(model: Any) -> list[int]:
    layout = layout_of(model)
    return [int(getattr(get_path(layer, layout.attention), layout.heads_attr)) for layer in encoder_layers(model)]


def ffn_per_layer(model: Any) -> list[int]:
    layout = layout_of(model)
    return [int(get_path(layer, layout.ffn_in).out_features) for layer in encoder_layers(model)]


def head_dim(model: Any) -> int:
    return int(attention_module(model, encoder_layers(model)[0]).attention_head_size)


def attention_fusion_shape(model: Any) -> tuple[int, int]:
    """(num_heads, hidden_size) to give ORT's BERT Attention fusion for this model.

    HF exports reshape Q/K/V with `-1` heads, so ORT takes num_heads from the caller and applies it to
    every layer; hidden_size must be num_heads x head_dim (the pruned width, not the model's width)
    or nothing fuses. With unequal head counts no single value is right: (0, 0) skips the fusion
    rather than emitting a wrong Attention node.
    """
    counts = set(heads_per_layer(model))
    if len(counts) != 1:
        return 0, 0
    heads = counts.pop()
    return heads, heads * head_dim(model)


def allocate(scores: Sequence[np.ndarray], keep_total: int, min_per_layer: int) -> list[list[int]]:
    """Global ranking with layer floors: the indices to keep in each layer, sorted.

    Every layer first keeps its `min_per_layer` best units (never emptied); the remaining slots go
    to the best-scoring units anywhere. Ties break by (layer, index) so the result is deterministic.
    """
    sizes = [len(s) for s in scores]
    floor = [min(min_per_layer, n) for n in sizes]
    if keep_total < sum(floor) or keep_total > sum(sizes):
        raise ConfigError(
            f"cannot keep {keep_total} units with {sum(floor)} reserved by the per-layer minimum and "
            f"{sum(sizes)} available: lower the sparsity or the per-layer minimum"
        )
    kept: list[set[int]] = []
    for layer_scores, n_floor in zip(scores, floor, strict=True):
        order = np.argsort(-np.asarray(layer_scores, dtype=np.float64), kind="stable")
        kept.append(set(order[:n_floor].tolist()))
    candidates = [
        (-float(s), layer, index)
        for layer, layer_scores in enumerate(scores)
        for index, s in enumerate(layer_scores)
        if index not in kept[layer]
    ]
    candidates.sort()
    for _, layer, index in candidates[: keep_total - sum(floor)]:
        kept[layer].add(index)
    return [sorted(k) for k in kept]


def allocate_uniform(scores: Sequence[np.ndarray], keep_per_layer: int) -> list[list[int]]:
    """The same count in every layer (ORT's Attention fusion takes one head count per graph)."""
    if not all(1 <= keep_per_layer <= len(s) for s in scores):
        raise ConfigError(f"cannot keep {keep_per_layer} heads per layer: each layer needs 1..its head count")
    return [sorted(np.argsort(-np.asarray(s, dtype=np.float64), kind="stable")[:keep_per_layer].tolist())
            for s in scores]


def keep_count(total: int, sparsity: float, floor_total: int) -> int:
    """Units kept for a sparsity fraction, rounded to the nearest unit, never below the floors."""
    return max(floor_total, min(total, round(total * (1.0 - sparsity))))


def _sliced_linear(linear: Any, index: Any, dim: int) -> Any:
    """A new Linear keeping `index` along `dim` of the weight (0 = outputs, 1 = inputs)."""
    import torch

    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.detach().index_select(0, index).clone()
    elif bias is not None:
        bias = bias.detach().clone()  # output-side bias is untouched when inputs are removed
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                          device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.train(linear.training)
    return new


def prune_layer_heads(layer: Any, keep: Sequence[int], layout: PruneLayout) -> None:
    import torch

    attn = get_path(layer, layout.attention)
    size = int(attn.attention_head_size)
    if not keep or len(keep) == getattr(attn, layout.heads_attr):
        if not keep:
            raise ConfigError("refusing to remove every head of a layer: set min_heads_per_layer >= 1")
        return
    rows = torch.tensor([h * size + i for h in keep for i in range(size)], dtype=torch.long)
    for name in layout.qkv:
        setattr(attn, name, _sliced_linear(getattr(attn, name), rows, 0))
    set_path(layer, layout.attention_out, _sliced_linear(get_path(layer, layout.attention_out), rows, 1))
    # The forward reshapes with -1 heads of `attention_head_size`; these keep the module consistent.
    setattr(attn, layout.heads_attr, len(keep))
    for name in layout.width_attrs:
        setattr(attn, name, len(keep) * size)


def prune_layer_ffn(layer: Any, keep: Sequence[int], layout: PruneLayout) -> None:
    import torch

    if not keep:
        raise ConfigError("refusing to remove every FFN neuron of a layer: set min_ffn_per_layer >= 1")
    if len(keep) == get_path(layer, layout.ffn_in).out_features:
        return
    index = torch.tensor(list(keep), dtype=torch.long)
    set_path(layer, layout.ffn_in, _sliced_linear(get_path(layer, layout.ffn_in), index, 0))
    set_path(layer, layout.ffn_out, _sliced_linear(get_path(layer, layout.ffn_out), index, 1))


def apply_pruning(model: Any, heads: Sequence[Sequence[int]] | None, ffn: Sequence[Sequence[int]] | None) -> None:
    """Slice `model` in place to the kept heads/neurons per layer and record the layout in its config."""
    layout = layout_of(model)
    for i, layer in enumerate(encoder_layers(model)):
        if heads is not None:
            prune_layer_heads(layer, heads[i], layout)
        if ffn is not None:
            prune_layer_ffn(layer, ffn[i], layout)
    model.config.pruned_layout = {
        "heads_per_layer": heads_per_layer(model),
        "intermediate_sizes": ffn_per_layer(model),
        "attention_head_size": head_dim(model),
    }


def count_parameters(model: Any, encoder_only: bool = False) -> int:
    modules = encoder_layers(model) if encoder_only else [model]
    return int(sum(p.numel() for m in modules for p in m.parameters()))
