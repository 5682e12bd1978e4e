"""Encoder families engineforge builds, and what each build step can do with each of them.

A family is a set of Hugging Face `model_type`s sharing one module layout. Steps that depend on the layout
(structured pruning, ONNX Runtime's attention fusion) read it from here, and a step that cannot work on a
family says so in `check_build` before anything is loaded (`model_blockers`), with the reason and a fix.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class PruneLayout:
    """Where a layer's prunable Linear modules live, as attribute paths from one encoder layer.

    Heads: rows of `qkv` (inside `attention`), columns of `attention_out`; the head count is the attribute
    `heads_attr` of `attention`. FFN neurons: rows of `ffn_in`, columns of `ffn_out`. The input of
    `attention_out` is the per-head context and the input of `ffn_out` the FFN activation: importance hooks
    read both there."""

    layers: str
    attention: str
    qkv: tuple[str, ...]
    attention_out: str
    heads_attr: str
    width_attrs: tuple[str, ...]  # attributes holding heads x head_dim, kept consistent after slicing
    ffn_in: str
    ffn_out: str


BERT_LAYOUT = PruneLayout(layers="base_model.encoder.layer", attention="attention.self",
                          qkv=("query", "key", "value"), attention_out="attention.output.dense",
                          heads_attr="num_attention_heads", width_attrs=("all_head_size",),
                          ffn_in="intermediate.dense", ffn_out="output.dense")
DISTILBERT_LAYOUT = PruneLayout(layers="base_model.transformer.layer", attention="attention",
                                qkv=("q_lin", "k_lin", "v_lin"), attention_out="attention.out_lin",
                                heads_attr="n_heads", width_attrs=("dim",), ffn_in="ffn.lin1", ffn_out="ffn.lin2")
MPNET_LAYOUT = PruneLayout(layers="base_model.encoder.layer", attention="attention.attn", qkv=("q", "k", "v"),
                           attention_out="attention.attn.o", heads_attr="num_attention_heads",
                           width_attrs=("all_head_size",), ffn_in="intermediate.dense", ffn_out="output.dense")
DEBERTA_LAYOUT = PruneLayout(layers="base_model.encoder.layer", attention="attention.self",
                             qkv=("query_proj", "key_proj", "value_proj"), attention_out="attention.output.dense",
                             heads_attr="num_attention_heads", width_attrs=("all_head_size",),
                             ffn_in="intermediate.dense", ffn_out="output.dense")


@dataclass(frozen=True)
class EncoderFamily:
    name: str
    model_types: tuple[str, ...]
    prune_layout: PruneLayout | None
    # Why a capability is missing ("" = available). Each names the structure that is not there.
    no_head_pruning: str = ""
    no_ffn_pruning: str = ""
    no_attention_fusion: str = ""

    def supports_head_pruning(self) -> bool:
        return self.prune_layout is not None and not self.no_head_pruning

    def supports_ffn_pruning(self) -> bool:
        return self.prune_layout is not None and not self.no_ffn_pruning


_SHARED_LAYERS = "ALBERT shares one layer's weights across every layer, so per-layer structured pruning has no meaning"
_FUSED_QKV = ("ModernBERT fuses Q/K/V into one Linear (Wqkv) and uses a gated FFN (Wi holds input and gate): "
              "engineforge's slicing does not handle that layout yet")
FAMILIES = (
    EncoderFamily("bert", ("bert", "roberta", "xlm-roberta", "electra"), BERT_LAYOUT),
    EncoderFamily("distilbert", ("distilbert",), DISTILBERT_LAYOUT),
    EncoderFamily("albert", ("albert",), None, no_head_pruning=_SHARED_LAYERS, no_ffn_pruning=_SHARED_LAYERS),
    EncoderFamily("deberta-v2", ("deberta-v2",), DEBERTA_LAYOUT,
                  no_head_pruning="DeBERTa's disentangled attention projects relative positions with the same "
                                  "per-head weights as keys and queries (share_att_key), which head slicing "
                                  "does not rewrite",
                  no_attention_fusion="ONNX Runtime's BERT attention fusion has no pattern for DeBERTa's "
                                      "disentangled (content + position) attention"),
    EncoderFamily("mpnet", ("mpnet",), MPNET_LAYOUT,
                  no_head_pruning="MPNet's relative position bias is one table for all heads and layers, "
                                  "computed once per forward; removing heads in a layer breaks its shape",
                  no_attention_fusion="ONNX Runtime's BERT attention fusion has no pattern for MPNet's "
                                      "attention with an added relative position bias"),
    EncoderFamily("modernbert", ("modernbert",), None, no_head_pruning=_FUSED_QKV, no_ffn_pruning=_FUSED_QKV,
                  no_attention_fusion="ONNX Runtime's BERT attention fusion has no pattern for ModernBERT's "
                                      "fused QKV with rotary embeddings"),
)
# Position ids start after the padding index (RoBERTa's scheme): max_position_embeddings - pad - 1 tokens fit.
POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "mpnet")
SUPPORTED_MODEL_TYPES = tuple(t for family in FAMILIES for t in family.model_types)
# config.json spells the same numbers differently per family.
_KEY_ALIASES = {"num_attention_heads": ("num_attention_heads", "n_heads"), "hidden_size": ("hidden_size", "dim")}


def family_for(model_type: object, where: str = "config.json") -> EncoderFamily:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedArchitectureError(
        f"model_type {model_type!r} in {where} is not supported; supported encoder types: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}")


def config_value(config: dict[str, Any], key: str, default: int = 0) -> int:
    for name in _KEY_ALIASES.get(key, (key,)):
        if config.get(name) is not None:
            return int(config[name])
    return default


def usable_positions(config: dict[str, Any]) -> int:
    """How many tokens (specials included) one sequence may hold."""
    positions = config_value(config, "max_position_embeddings", 512)
    if config.get("model_type") in POSITIONS_AFTER_PADDING:
        positions -= int(config.get("pad_token_id") or 0) + 1
    return positions


def read_family(checkpoint: Path) -> EncoderFamily | None:
    """The checkpoint's family from config.json alone, or None when config.json is missing or unreadable
    (loading the checkpoint reports that, with the fix)."""
    config_file = Path(checkpoint) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    return family_for(config.get("model_type"), str(config_file)) if isinstance(config, dict) else None


def read_task(checkpoint: Path, forced: str | None = None) -> str | None:
    """The checkpoint's task from config.json and its files, or None when unreadable (loading reports it)."""
    from .tasks import detect_task

    try:
        config = json.loads((Path(checkpoint) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return detect_task(Path(checkpoint), config, forced) if isinstance(config, dict) else None


def model_blockers(steps: Sequence[Any], family: EncoderFamily | None, task: str | None = None) -> list[Any]:
    """Every `config.Blocker` that the family (and task) puts on the recipe's steps; empty = all can run."""
    return [blocker for step in steps for blocker in step.model_blockers(family, task)]
