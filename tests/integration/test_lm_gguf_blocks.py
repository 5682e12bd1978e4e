"""The `gguf` int4 method: a quantized llama GGUF's own Q4_0 / Q4_1 blocks (and Q8_0 head) written into the model
builder's graph as they are. Tiny LLaMA made from a config, written as a quantized GGUF like llama.cpp's files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engineforge.build.lm.builders import LMCandidate, lm_builder
from engineforge.build.lm.checkpoint import ORT, read_lm_checkpoint
from engineforge.errors import CheckpointError
from tests.helpers.tiny_gguf import write_llama_gguf
from tests.helpers.tiny_lm import make_tiny_lm

GGUF_INT4 = LMCandidate(ORT, "int4", 32, "gguf")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("gguf") / "tiny-llama", "llama")


def _weights_in_graph(model_dir: Path, prefix: str) -> np.ndarray:
    """The [N, K] weight a MatMulNBits of the built graph computes with: d * (q - zero point), plus the rest."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_dir / "model.onnx"))
    tensors = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    packed, d = tensors[f"{prefix}.MatMul.weight_Q4G32"], tensors[f"{prefix}.MatMul.weight_scale"]
    q = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(packed.shape[0], packed.shape[1], -1)
    zp_packed = tensors[f"{prefix}.MatMul.weight_zp"]
    zero = np.stack([zp_packed & 0xF, zp_packed >> 4], axis=-1).reshape(zp_packed.shape[0], -1)[:, : d.shape[1]]
    rest = tensors.get(f"{prefix}.MatMul.gguf_rest")
    w = d[..., None] * (q.astype(np.float32) - zero[..., None])
    if rest is not None:
        w = w + rest.T[..., None]
    return w.reshape(w.shape[0], -1)


@pytest.mark.parametrize("blocks", ["Q4_1", "Q4_0"])
def test_the_graph_computes_with_exactly_the_gguf_weights(tiny_llama: Path, tmp_path: Path, blocks: str) -> None:
    from safetensors.numpy import load_file

    checkpoint = read_lm_checkpoint(write_llama_gguf(tiny_llama, tmp_path / "tiny.gguf", blocks), tmp_path / "work")
    details = lm_builder(ORT).build(checkpoint.hf_dir, GGUF_INT4, tmp_path / "model", 1)
    kept = details["gguf_blocks"]
    assert kept["weights_kept"] == 2 * 5 and kept["lm_head_kept"]  # qkv, o, gate, up, down per layer; Q8_0 head
    assert (kept["weights_with_rest"] > 0) == (blocks == "Q4_1")  # Q4_0's zero point 8 is exact on its own
    # The dequantized checkpoint is the fp32 reference: the graph's weights equal it, Q/K rows in their HF order.
    reference = load_file(str(checkpoint.hf_dir / "model.safetensors"))
    attention = [reference[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"]
    np.testing.assert_allclose(_weights_in_graph(tmp_path / "model", "model.layers.0.attn.qkv_proj"),
                               np.concatenate(attention), atol=1e-6)
    np.testing.assert_allclose(_weights_in_graph(tmp_path / "model", "model.layers.1.mlp.down_proj"),
                               reference["model.layers.1.mlp.down_proj.weight"], atol=1e-6)


def test_gguf_blocks_beat_quantizing_the_dequantized_copy_again(tiny_llama: Path, tmp_path: Path) -> None:
    """Served as built, the kept blocks' log-probs sit closer to the fp32 reference than round-to-nearest int4's."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.helpers.lm_bundle import bundle_for_model_dir
    from tests.helpers.tiny_lm import LM_TEXTS

    checkpoint = read_lm_checkpoint(write_llama_gguf(tiny_llama, tmp_path / "tiny.gguf", "Q4_1"), tmp_path / "work")
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint.hf_dir))
    errors = {}
    for name, candidate in (("gguf", GGUF_INT4), ("rtn", LMCandidate(ORT, "int4", 32))):
        lm_builder(ORT).build(checkpoint.hf_dir, candidate, tmp_path / name / "model", 1)
        engine, tokenizer = bundle_for_model_dir(tmp_path / name, checkpoint.hf_dir)
        diffs = []
        for text in LM_TEXTS:
            ids = tokenizer(text)["input_ids"]
            with torch.inference_mode():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
            expected = logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
            diffs.append(np.abs(np.array(engine.log_probs(ids)) - expected).mean())
        errors[name] = float(np.mean(diffs))
    assert errors["gguf"] < errors["rtn"] / 2, errors


def test_checkpoints_the_method_cannot_keep_are_refused_with_the_fix(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"was not read from a \.gguf file"):
        lm_builder(ORT).build(tiny_llama, GGUF_INT4, tmp_path / "a", 1)
    fp32 = read_lm_checkpoint(write_llama_gguf(tiny_llama, tmp_path / "f32.gguf"), tmp_path / "work")
    with pytest.raises(CheckpointError, match=r"stores layer weights as F32.*int4 g32"):
        lm_builder(ORT).build(fp32.hf_dir, GGUF_INT4, tmp_path / "b", 1)
