"""Builds `openvino-genai` LM engines: a Hugging Face causal LM converted to a stateful OpenVINO IR with its KV cache
inside (what OpenVINO GenAI serves), weights compressed by NNCF.

Steps, without optimum-intel (it would replace this project's torch and transformers pins):
1. Trace the model once with its cache as plain tensors (one past key/value pair per layer in, one present pair
   out), attention through SDPA, so GenAI's paged-attention pass finds the pattern it rewrites.
2. Make it stateful: a `beam_idx` input gathers the cache rows, every past/present pair becomes a variable that
   starts as zeros of the batch's size.
3. Check the IR against torch (a prefill and one decode step) before anything else is spent on it.
4. Compress weights: int8 per channel (INT8_ASYM), or int4 block-wise (INT4_SYM, the candidate's group size; NNCF
   keeps embeddings and the last MatMul in int8). Data-free: no calibration text is needed.

The folder holds openvino_model.xml/.bin and openvino_lm.json (max length, vocabulary, KV bytes per token). A
sliding-window model is served up to its window only: the trace and GenAI's paged attention attend to every
position, which equals the model's own attention only while the sequence fits the window.
Tokenization stays engineforge's (the bundle's Hugging Face tokenizer), so GenAI needs no tokenizer IR.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from engineforge.errors import CheckpointError, UnsupportedArchitectureError
from engineforge.lm.openvino_genai_runtime import LAYOUT_FILE, MODEL_XML

from ..files import file_mb
from .builders import LMCandidate, buildable_config, register_lm_builder
from .checkpoint import OVGENAI, context_length, family_runtime_reason

PRECISIONS = ("fp32", "int8", "int4")
DEFAULT_GROUP = 32
CHECK_TOLERANCE = 1e-3  # max |logit difference| / max |logit|, IR vs torch (fp32); a tracing mistake gives O(1)


def _check(family: str, candidate: LMCandidate) -> str:
    reason = family_runtime_reason(family, candidate.runtime)
    if reason:
        return reason
    if candidate.precision not in PRECISIONS:
        return f"the OpenVINO builder compresses to {', '.join(PRECISIONS)}, not {candidate.precision}"
    if candidate.method not in (None, "rtn"):
        return f"method {candidate.method} is an ONNX Runtime int4 method; NNCF rounds to nearest"
    if candidate.precision != "int4" and candidate.group_size:
        return "only int4 is compressed in groups: leave group_size unset"
    return ""


@register_lm_builder(OVGENAI, _check)
def build_openvino(hf_dir: Path, candidate: LMCandidate, model_dir: Path, threads: int | None) -> dict[str, Any]:
    import openvino as ov
    import torch
    from transformers import AutoModelForCausalLM

    hf_dir, model_dir = Path(hf_dir), Path(model_dir)
    config = buildable_config(hf_dir, candidate, _check)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), local_files_only=True, dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    window = sliding_window(config)
    if window:  # traced with full attention, which equals the window's within it (max_length is capped below)
        model.config.sliding_window = None
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = ["full_attention"] * len(model.config.layer_types)
    layers, kv_heads, head_dim = _cache_layout(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks frozen by the trace; step 3 checks
        traced = ov.convert_model(_flat_cache_module(model, layers), example_input=_example(layers, kv_heads, head_dim))
    _name_ports(traced, layers)
    _make_stateful(traced, kv_heads, head_dim)
    difference = _check_against_torch(model, traced, threads)
    if difference > CHECK_TOLERANCE:
        raise CheckpointError(f"the OpenVINO IR of {hf_dir} differs from torch by {difference:.3g} of the largest "
                              f"logit (tolerance {CHECK_TOLERANCE}): this model's layout does not trace cleanly; "
                              "build it with the onnxruntime or torch runtime")
    traced, group = _compress(traced, candidate)
    model_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(traced, model_dir / MODEL_XML, compress_to_fp16=False)
    max_length = context_length(config)
    if window and window < max_length:  # beyond it GenAI's paged attention (full) would answer differently
        max_length = window
    layout = {"max_length": max_length, "sliding_window": window, "vocab_size": int(model.config.vocab_size),
              "kv_bytes_per_token": 2 * layers * kv_heads * head_dim * 4, "layers": layers, "kv_heads": kv_heads,
              "head_dim": head_dim}
    (model_dir / LAYOUT_FILE).write_text(json.dumps(layout, indent=2) + "\n")
    size = sum(file_mb(p) for p in model_dir.glob("openvino_model.*"))
    return {"size_mb": round(size, 3), "group_size": group, "threads": threads, "max_length": max_length,
            "ir_vs_torch_relative_logit_diff": float(f"{difference:.3g}"),
            "compression": {"fp32": "none", "int8": "INT8_ASYM per channel",
                            "int4": f"INT4_SYM group {group}, embeddings and last MatMul INT8"}[candidate.precision]}


def sliding_window(config: dict[str, Any]) -> int | None:
    """The attention window of a checkpoint whose layers attend to a sliding window (Mistral, Phi-3), else None
    (Qwen2 declares a window it does not use unless use_sliding_window is set)."""
    window = config.get("sliding_window")
    layer_types = config.get("layer_types")
    if not window or config.get("use_sliding_window") is False:
        return None
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)


def _flat_cache_module(model: Any, layers: int) -> Any:
    """The model with its cache as plain tensors: (input_ids, attention_mask, position_ids, past) ->
    (logits, present...), past/present ordered layer by layer, key then value."""
    import torch
    from transformers import DynamicCache

    class FlatCacheLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, past: list[Any]) -> Any:
            cache = DynamicCache(config=self.model.config)
            for i in range(layers):  # set as initialised layers: a layer's lazy start (an empty 1-D tensor)
                layer = cache.layers[i]  # does not trace
                layer.dtype, layer.device = past[0].dtype, past[0].device
                layer.keys, layer.values, layer.is_initialized = past[2 * i], past[2 * i + 1], True
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cache=cache, use_cache=True)
            present = [t for layer in out.cache.layers[:layers] for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    return FlatCacheLM()


def _cache_layout(model: Any) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) read from the cache a one-token forward returns: no per-family config keys."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.zeros((1, 1), dtype=torch.long), use_cache=True)
    layers = out.cache.layers
    keys = layers[0].keys
    if keys.dim() != 4 or any(layer.keys.shape != keys.shape for layer in layers):
        raise UnsupportedArchitectureError(f"{type(model).__name__}'s cache is not one [batch, heads, positions, "
                                           "head_dim] tensor pair per layer; build it with the onnxruntime or "
                                           "torch runtime")
    return len(layers), int(keys.shape[1]), int(keys.shape[3])


def _example(layers: int, kv_heads: int, head_dim: int, past_len: int = 2, new: int = 3) -> dict[str, Any]:
    import torch

    return {"input_ids": torch.ones((1, new), dtype=torch.long),
            "attention_mask": torch.ones((1, past_len + new), dtype=torch.long),
            "position_ids": torch.arange(past_len, past_len + new)[None],
            "past": [torch.zeros((1, kv_heads, past_len, head_dim)) for _ in range(2 * layers)]}


def _name_ports(model: Any, layers: int) -> None:
    names = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    for port, name in zip(model.inputs, names, strict=True):
        port.get_tensor().set_names({name})
    outputs = ["logits"] + [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    for port, name in zip(model.outputs, outputs, strict=True):
        port.get_tensor().set_names({name})


def _make_stateful(model: Any, kv_heads: int, head_dim: int) -> None:
    """past/present pairs become variables read through Gather(beam_idx) (GenAI reorders rows with it); each starts
    as zeros [batch, kv_heads, 0, head_dim], batch taken from input_ids."""
    import openvino as ov
    import openvino.opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    beam = ops.parameter([-1], ov.Type.i32, name="beam_idx")
    beam.output(0).get_tensor().set_names({"beam_idx"})
    pairs = {}
    for param in model.get_parameters():
        name = param.get_output_tensor(0).get_any_name()
        if not name.startswith("past_key_values."):
            continue
        param.set_partial_shape(ov.PartialShape([-1, kv_heads, -1, head_dim]))
        consumers = list(param.output(0).get_target_inputs())
        gathered = ops.gather(param, beam, ops.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
        pairs[name] = name.replace("past_key_values.", "present.")
    model.add_parameters([beam])
    model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(model, pairs)
    batch = ops.gather(ops.shape_of(model.input("input_ids"), output_type="i64"), ops.constant([0]), ops.constant(0))
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [batch] + [ops.constant(np.array([d.get_length() if d.is_static else 0], np.int64))
                              for d in list(op.get_output_partial_shape(0))[1:]]
            zeros = ops.broadcast(ops.constant(0.0, dtype=op.get_output_element_type(0)), ops.concat(dims, 0))
            op.set_arguments([zeros])
    model.validate_nodes_and_infer_types()


def _check_against_torch(model: Any, ov_model: Any, threads: int | None) -> float:
    """Max |logit difference| over a 6-token prefill and one decode step, IR (stateful) vs torch, relative to the
    largest |logit| (trained models' logits run to tens)."""
    import openvino as ov
    import torch

    vocab = int(model.config.vocab_size)
    ids = np.random.default_rng(0).integers(0, vocab, size=(1, 6))
    with torch.no_grad():
        first = model(torch.from_numpy(ids), use_cache=True)
        nxt = first.logits[0, -1].argmax().reshape(1, 1)
        second = model(nxt, cache=first.cache, use_cache=True)
    properties = {"KV_CACHE_PRECISION": "f32"} | ({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})
    compiled = ov.Core().compile_model(ov_model, "CPU", properties)  # u8, the CPU default, would be checked too
    request = compiled.create_infer_request()
    beam = np.zeros(1, np.int32)
    got1 = request.infer({"input_ids": ids, "attention_mask": np.ones((1, 6), np.int64),
                          "position_ids": np.arange(6)[None], "beam_idx": beam})["logits"].copy()
    got2 = request.infer({"input_ids": nxt.numpy(), "attention_mask": np.ones((1, 7), np.int64),
                          "position_ids": np.array([[6]]), "beam_idx": beam})["logits"].copy()
    want1, want2 = first.logits.numpy(), second.logits.numpy()
    scale = max(float(np.abs(want1).max()), float(np.abs(want2).max()), 1e-6)
    return float(max(np.abs(got1 - want1).max(), np.abs(got2 - want2).max())) / scale


def _compress(model: Any, candidate: LMCandidate) -> tuple[Any, int | None]:
    if candidate.precision == "fp32":
        return model, None
    import nncf

    if candidate.precision == "int8":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM), None
    group = candidate.group_size or DEFAULT_GROUP
    return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=group, ratio=1.0), group
