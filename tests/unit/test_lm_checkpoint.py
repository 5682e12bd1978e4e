"""Causal-LM checkpoint reading and the onnxruntime-genai builder's refusals: config and file checks only (no
model is trained or loaded here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engineforge.build.lm.builders import LMCandidate, why_not
from engineforge.build.lm.checkpoint import LM_MODEL_TYPES, is_causal_lm, read_lm_checkpoint
from engineforge.build.lm.ortgenai_builder import _builder_input, build_ortgenai, builder_options
from engineforge.errors import CheckpointError, ConfigError, UnsupportedArchitectureError

ORT = "onnxruntime-genai"


def _checkpoint(path: Path, model_type: str = "llama", architecture: str = "LlamaForCausalLM",
                weights: bool = True, **extra: object) -> Path:
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    config = {"model_type": model_type, "architectures": [architecture] if architecture else [],
              "max_position_embeddings": 64, **extra}
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer.json").write_text("{}")
    if weights:
        save_file({"w": np.zeros((2, 2), np.float32)}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize(("architecture", "expected"), [("LlamaForCausalLM", True), ("GPT2LMHeadModel", True),
                                                        ("BertForSequenceClassification", False),
                                                        ("LlamaForSequenceClassification", False)])
def test_is_causal_lm_reads_architectures(tmp_path: Path, architecture: str, expected: bool) -> None:
    assert is_causal_lm(_checkpoint(tmp_path / "m", architecture=architecture)) is expected


def test_is_causal_lm_for_gguf_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert is_causal_lm(tmp_path / "m.gguf")
    assert not is_causal_lm(tmp_path / "absent")
    (tmp_path / "m.bin").write_bytes(b"x")
    assert not is_causal_lm(tmp_path / "m.bin")


def test_a_valid_directory_is_read_with_its_family(tmp_path: Path) -> None:
    checkpoint = read_lm_checkpoint(_checkpoint(tmp_path / "q", "qwen2", "Qwen2ForCausalLM"))
    assert (checkpoint.family.name, checkpoint.model_type, checkpoint.source) == ("qwen2", "qwen2", "hf")
    assert checkpoint.max_positions == 64


def test_missing_path_and_missing_config_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_lm_checkpoint(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        read_lm_checkpoint(tmp_path / "empty")


def test_unknown_model_type_names_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedArchitectureError) as caught:
        read_lm_checkpoint(_checkpoint(tmp_path / "f", "falcon", "FalconForCausalLM"))
    assert "'falcon'" in str(caught.value)
    assert all(t in str(caught.value) for t in LM_MODEL_TYPES)


def test_an_encoder_checkpoint_is_sent_to_the_encoder_tasks(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedArchitectureError, match=r"not a causal LM.*--task text-classification"):
        read_lm_checkpoint(_checkpoint(tmp_path / "b", "bert", "BertForSequenceClassification"))
    with pytest.raises(UnsupportedArchitectureError, match="not a causal LM"):
        read_lm_checkpoint(_checkpoint(tmp_path / "e", "bert", ""))


def test_corrupt_files_are_checkpoint_errors(tmp_path: Path) -> None:
    bad_json = _checkpoint(tmp_path / "j")
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_lm_checkpoint(bad_json)
    truncated = _checkpoint(tmp_path / "t")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:-4])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt"):
        read_lm_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="has no weights"):
        read_lm_checkpoint(_checkpoint(tmp_path / "w", weights=False))


def test_gguf_needs_a_work_dir_and_a_readable_file(tmp_path: Path) -> None:
    garbage = tmp_path / "bad.gguf"
    garbage.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigError, match="work dir"):
        read_lm_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="could not read GGUF file"):
        read_lm_checkpoint(garbage, tmp_path / "work")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"not a \.gguf"):
        read_lm_checkpoint(tmp_path / "weights.bin")


def test_ortgenai_check_refuses_what_the_builder_cannot_build() -> None:
    assert "no GPT-2 exporter" in why_not("gpt2", LMCandidate(ORT, "int4", 32))
    assert "torch" in why_not("gpt2", LMCandidate(ORT, "fp32"))
    assert "not nf4" in why_not("llama", LMCandidate(ORT, "nf4"))
    assert "no quantization groups" in why_not("llama", LMCandidate(ORT, "fp32", 32))
    assert "block_size takes" in why_not("qwen2", LMCandidate(ORT, "int4", 512))
    assert "not a causal-LM family" in why_not("bert", LMCandidate(ORT, "int4", 32))
    for family in ("llama", "qwen2", "mistral", "phi3"):
        assert why_not(family, LMCandidate(ORT, "int8", 64)) == ""


def test_gpt2_build_is_refused_before_the_builder_runs(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path / "g", "gpt2", "GPT2LMHeadModel")
    with pytest.raises(UnsupportedArchitectureError, match="GPT-2"):
        build_ortgenai(source, LMCandidate(ORT, "int4", 32), tmp_path / "out", None)
    assert not (tmp_path / "out").exists()


def test_the_gguf_method_is_refused_where_it_cannot_keep_blocks(tmp_path: Path) -> None:
    from engineforge.build.lm.build import _refusal

    gguf = LMCandidate(ORT, "int4", 32, "gguf")
    assert why_not("llama", gguf) == "" and why_not("mistral", gguf) == ""
    assert "llama-layout" in why_not("qwen2", gguf)
    assert "group_size 32" in why_not("llama", LMCandidate(ORT, "int4", 64, "gguf"))
    assert "int4 weights only" in why_not("llama", LMCandidate(ORT, "int8", 32, "gguf"))
    assert builder_options(gguf) == {"block_size": 32, "accuracy_level": 4, "is_symmetric": False,
                                     "algo_config": "rtn_last"}
    hf_dir = read_lm_checkpoint(_checkpoint(tmp_path / "l", "llama", "LlamaForCausalLM"))
    assert "Hugging Face directory" in _refusal(hf_dir, gguf)
    assert _refusal(hf_dir, LMCandidate(ORT, "int4", 32)) == ""


def test_builder_options_carry_the_group_size() -> None:
    assert builder_options(LMCandidate(ORT, "int4", 64)) == {"block_size": 64, "accuracy_level": 4}
    assert builder_options(LMCandidate(ORT, "int8"))["block_size"] == 32
    assert builder_options(LMCandidate(ORT, "fp32")) == {}


def test_phi3_without_longrope_is_staged_with_matching_lengths(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path / "p", "phi3", "Phi3ForCausalLM", original_max_position_embeddings=4096)
    config = json.loads((source / "config.json").read_text())
    staged = _builder_input(source, config, tmp_path / "staged")
    assert staged != source
    assert json.loads((staged / "config.json").read_text())["original_max_position_embeddings"] == 64
    assert (staged / "model.safetensors").resolve() == (source / "model.safetensors").resolve()
    llama = _checkpoint(tmp_path / "l")
    assert _builder_input(llama, json.loads((llama / "config.json").read_text()), tmp_path / "s2") == llama


def test_int4_method_reaches_the_model_builder_and_is_refused_elsewhere():
    from engineforge.build.lm.builders import LMCandidate, why_not
    from engineforge.build.lm.ortgenai_builder import builder_options
    from engineforge.errors import ConfigError

    mixed = LMCandidate("onnxruntime-genai", "int4", 32, "k_quant_mixed")
    assert builder_options(mixed)["algo_config"] == "k_quant_mixed" and builder_options(mixed)["block_size"] == 32
    assert "algo_config" not in builder_options(LMCandidate("onnxruntime-genai", "int4", 32))
    assert "int4 weights only" in why_not("llama", LMCandidate("onnxruntime-genai", "int8", None, "k_quant_mixed"))
    with pytest.raises(ConfigError, match="choose from"):
        LMCandidate("onnxruntime-genai", "int4", 32, "gptq")
