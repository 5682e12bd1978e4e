"""Keep a GGUF's own 4-bit blocks: the `gguf` int4 method writes a llama-layout GGUF's Q4_0 / Q4_1 weights (and a
Q8_0 lm_head / tied embedding) into the model builder's MatMulNBits graph as they are, instead of quantizing the
dequantized copy again.

Why: a .gguf checkpoint's fp32 reference IS its dequantized blocks. Re-quantizing them on another 4-bit grid adds a
second rounding as large as the first (SmolLM2-135M Q4_1: +31.7 % perplexity with round-to-nearest int4), while the
same blocks kept as they are lose nothing in the weights (+0.9 % perplexity, all of it from int8 activations).

How each block type maps onto MatMulNBits (w = scale * (q - zero_point), integer zero points):
- Q4_0 (w = d * (q - 8)): scale d, zero point 8. Exact.
- Q4_1 (w = d * q + m): scale d, zero point z = round(-m / d), and the rest r = m + d * z (a constant per block,
  |r| <= d / 2) added back exactly: y += blocksum(x) @ r^T, one small MatMul over K / 32 sums per weight.
- Q8_0 (w = d * q): 8-bit scale d, zero point 128 (q stored + 128). Exact. F32 / F16 heads keep the builder's int8.
GGUF blocks run along each weight's input dimension, as MatMulNBits blocks do; llama.cpp's Q/K row permutation (its
rotary layout) is undone row-wise, which moves whole blocks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from engineforge.errors import CheckpointError

SOURCE_FILE = "gguf_source.json"  # written beside a GGUF's dequantized copy: which file it came from
BLOCK = 32
_LINEAR = {"attn_output": "attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj"}
_Q4 = ("Q4_0", "Q4_1")


def record_source(hf_dir: Path, gguf_file: Path) -> None:
    (Path(hf_dir) / SOURCE_FILE).write_text(json.dumps({"gguf": str(Path(gguf_file).resolve())}) + "\n")


def gguf_source(hf_dir: Path) -> Path:
    """The GGUF a dequantized checkpoint came from; CheckpointError when it did not come from one (or it moved)."""
    record = Path(hf_dir) / SOURCE_FILE
    if not record.is_file():
        raise CheckpointError(f"{hf_dir} was not read from a .gguf file: the gguf int4 method keeps a GGUF's own "
                              "4-bit blocks, so build from the .gguf (other checkpoints use int4 g32)")
    path = Path(json.loads(record.read_text())["gguf"])
    if not path.is_file():
        raise CheckpointError(f"{path}, the GGUF {hf_dir} was read from, is gone: build from the .gguf again")
    return path


def _blocks(tensor: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(q [rows, K/32, 32] as stored, scale d [rows, K/32], min m or None) of one Q4_0 / Q4_1 / Q8_0 tensor."""
    kind = tensor.tensor_type.name
    size = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[kind]
    raw = np.asarray(tensor.data).reshape(int(tensor.shape[1]) if len(tensor.shape) > 1 else 1, -1, size)
    d = raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if kind == "Q8_0":
        return raw[..., 2:].copy().view(np.int8), d, None
    start = 4 if kind == "Q4_1" else 2
    packed = raw[..., start:start + 16]
    q = np.concatenate([packed & 0xF, packed >> 4], axis=-1)  # elements 0..15 in low nibbles, 16..31 in high
    # Q4_0 is Q4_1 with the minimum -8 d: one form for both (its rest r then comes out 0).
    m = raw[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) if kind == "Q4_1" else -8 * d
    return q, d, m


def _rope_rows(rows: int, heads: int) -> np.ndarray:
    """Row order that undoes llama.cpp's Q/K permutation: Hugging Face row i is GGUF row order[i]."""
    return np.arange(rows).reshape(heads, rows // heads // 2, 2).swapaxes(1, 2).reshape(-1)


def read_llama_blocks(gguf_file: Path) -> tuple[dict[str, tuple[np.ndarray, ...]], tuple | None]:
    """{builder weight prefix: (q, d, m)} for every linear weight of a llama-layout GGUF, and the lm_head's Q8_0
    blocks (None when it is stored otherwise). CheckpointError names a tensor that is not 4-bit Q4_0 / Q4_1."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_file))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    if arch != "llama":
        raise CheckpointError(f"{gguf_file} is a {arch!r} GGUF: the gguf int4 method reads llama-layout files only")
    tensors = {t.name: t for t in reader.tensors}
    heads = int(reader.fields["llama.attention.head_count"].parts[-1][0])
    kv_heads = int(reader.fields["llama.attention.head_count_kv"].parts[-1][0])
    others = sorted({t.tensor_type.name for name, t in tensors.items()
                     if name.startswith("blk.") and name.endswith(".weight") and len(t.shape) == 2
                     and t.tensor_type.name not in _Q4})
    if others:
        raise CheckpointError(f"{gguf_file} stores layer weights as {', '.join(others)}: the gguf int4 method keeps "
                              "Q4_0 / Q4_1 blocks only; use the int4 g32 candidate for this file")
    weights: dict[str, tuple[np.ndarray, ...]] = {}
    for layer in range(len([n for n in tensors if n.endswith(".attn_q.weight")])):
        parts = []
        for name, rope_heads in (("attn_q", heads), ("attn_k", kv_heads), ("attn_v", None)):
            q, d, m = _blocks(tensors[f"blk.{layer}.{name}.weight"])
            order = _rope_rows(q.shape[0], rope_heads) if rope_heads else slice(None)
            parts.append((q[order], d[order], m[order]))  # type: ignore[index]
        weights[f"model.layers.{layer}.attn.qkv_proj"] = tuple(np.concatenate(p) for p in zip(*parts, strict=True))
        for name, module in _LINEAR.items():
            weights[f"model.layers.{layer}.{module}"] = _blocks(tensors[f"blk.{layer}.{name}.weight"])
    head = tensors.get("output.weight", tensors.get("token_embd.weight"))
    lm_head = _blocks(head) if head is not None and head.tensor_type.name == "Q8_0" else None
    return weights, lm_head


def keep_gguf_blocks(model_dir: Path, gguf_file: Path) -> dict[str, Any]:
    """Rewrite the builder's asymmetric int4 graph in `model_dir` with the GGUF's own blocks; what was kept."""
    import onnx
    from onnx import helper, numpy_helper

    weights, lm_head = read_llama_blocks(gguf_file)
    path = Path(model_dir) / "model.onnx"
    model = onnx.load(str(path))
    initializers = {t.name: t for t in model.graph.initializer}

    def put(name: str, array: np.ndarray) -> None:
        if name not in initializers or list(initializers[name].dims) != list(array.shape):
            raise CheckpointError(f"the model builder's graph has no {name} of shape {list(array.shape)}: its "
                                  "layout differs from the GGUF's; use the int4 g32 candidate")
        initializers[name].CopyFrom(numpy_helper.from_array(array, name))

    rests: dict[str, np.ndarray] = {}
    for prefix, (q, d, m) in weights.items():
        zero = np.clip(np.rint(-m / np.where(d == 0, 1, d)), 0, 15).astype(np.uint8)
        rest = (m + d * zero).astype(np.float32)  # w = d * (q - zero) + rest, exactly
        blocks = q.shape[1]
        zero_packed = np.zeros((q.shape[0], (blocks + 1) // 2), np.uint8)
        zero_packed[:, :] = zero[:, 0::2]
        zero_packed[:, : blocks // 2] |= zero[:, 1::2] << 4
        put(f"{prefix}.MatMul.weight_Q4G32", (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8))
        put(f"{prefix}.MatMul.weight_scale", d)
        put(f"{prefix}.MatMul.weight_zp", zero_packed)
        if np.any(rest):
            rests[f"{prefix}.MatMul.weight_Q4G32"] = rest
    if lm_head is not None:
        q8, d8, _ = lm_head
        put("lm_head.MatMul.weight_Q8G32", (q8.astype(np.int16) + 128).astype(np.uint8))
        put("lm_head.MatMul.weight_scale", d8)
        put("lm_head.MatMul.weight_zp", np.full(d8.shape, 128, np.uint8))
    nodes, added, sums = [], [], {}
    for node in model.graph.node:
        rest = rests.get(node.input[1]) if node.op_type == "MatMulNBits" else None
        if rest is None:
            nodes.append(node)
            continue
        x, out = node.input[0], node.output[0]
        if x not in sums:  # one sum per block of the input, shared by the weights that read it (gate, up)
            added += [numpy_helper.from_array(np.array([0, 0, rest.shape[1], BLOCK], np.int64), f"{x}/gguf_blocks"),
                      numpy_helper.from_array(np.array([-1], np.int64), f"{x}/gguf_axis")]
            nodes += [helper.make_node("Reshape", [x, f"{x}/gguf_blocks"], [f"{x}/gguf_blocked"]),
                      helper.make_node("ReduceSum", [f"{x}/gguf_blocked", f"{x}/gguf_axis"], [f"{x}/gguf_sums"],
                                       keepdims=0)]
            sums[x] = f"{x}/gguf_sums"
        name = node.input[1].replace("weight_Q4G32", "gguf_rest")
        added.append(numpy_helper.from_array(np.ascontiguousarray(rest.T), name))
        node.output[0] = f"{out}/gguf_nbits"
        nodes += [node, helper.make_node("MatMul", [sums[x], name], [f"{out}/gguf_rest"]),
                  helper.make_node("Add", [f"{out}/gguf_nbits", f"{out}/gguf_rest"], [out])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(added)
    (Path(model_dir) / "model.onnx.data").unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
    return {"gguf": str(gguf_file), "weights_kept": len(weights), "lm_head_kept": lm_head is not None,
            "weights_with_rest": len(rests)}
