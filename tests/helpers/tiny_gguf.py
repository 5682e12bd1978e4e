"""Write a tiny llama checkpoint (tests/helpers/tiny_lm.py) as an fp32 GGUF file the way llama.cpp's
convert_hf_to_gguf.py lays it out: llama.* metadata, a byte-level BPE ("gpt2") vocabulary with its merges, tensors
under llama.cpp names with Q/K rows permuted for its rotary layout (transformers un-permutes them on reading)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_LAYER_TENSORS = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                  "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                  "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down"}


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = name.split(".", 3)
    module = rest.rsplit(".", 1)[0]
    return f"blk.{layer}.{_LAYER_TENSORS[module]}.weight"


def write_llama_gguf(hf_dir: Path, path: Path, blocks: str | None = None) -> Path:
    """`blocks` ("Q4_0", "Q4_1"): layer weights quantized in those blocks and the embedding / output in Q8_0, as
    llama.cpp's quantized files are; None: every tensor fp32."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((Path(hf_dir) / "config.json").read_text())
    tokenizer = json.loads((Path(hf_dir) / "tokenizer.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(float((config.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if blocks is None else gguf.LlamaFileType[f"MOSTLY_{blocks}"])

    vocab = tokenizer["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["content"] for t in tokenizer.get("added_tokens", [])}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    writer.add_vocab_size(len(tokens))

    for name, tensor in load_file(str(Path(hf_dir) / "model.safetensors")).items():
        tensor = tensor.astype(np.float32)
        if name.endswith("q_proj.weight"):
            tensor = _permute(tensor, heads)
        elif name.endswith("k_proj.weight"):
            tensor = _permute(tensor, kv_heads)
        kind = blocks if name.startswith("model.layers.") and tensor.ndim == 2 else "Q8_0"
        if blocks is None or tensor.ndim != 2:
            writer.add_tensor(_gguf_name(name), tensor)
        else:
            qtype = gguf.GGMLQuantizationType[kind]
            writer.add_tensor(_gguf_name(name), gguf.quants.quantize(tensor, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
