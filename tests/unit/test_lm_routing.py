"""Which build a request is: a causal-LM directory, a .gguf file, `--task text-generation` or an lm-* preset go to
the LM build; a preset of the other kind is refused with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engineforge.build.lm.build_entry import is_lm_request
from engineforge.build.lm.checkpoint import is_causal_lm
from engineforge.errors import ConfigError


def _checkpoint(tmp_path: Path, architecture: str) -> Path:
    path = tmp_path / architecture
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"architectures": [architecture], "model_type": "x"}))
    return path


def test_causal_lms_are_recognised_by_architecture_or_gguf_suffix(tmp_path: Path) -> None:
    assert is_causal_lm(_checkpoint(tmp_path, "LlamaForCausalLM"))
    assert is_causal_lm(_checkpoint(tmp_path, "GPT2LMHeadModel"))
    assert not is_causal_lm(_checkpoint(tmp_path, "BertForSequenceClassification"))
    assert is_causal_lm(tmp_path / "model.Q4_K_M.gguf")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert not is_causal_lm(broken)  # the encoder build reports the corrupt config as before


def test_routing_and_preset_mixups(tmp_path: Path) -> None:
    lm, encoder = _checkpoint(tmp_path, "Qwen2ForCausalLM"), _checkpoint(tmp_path, "BertForSequenceClassification")
    assert is_lm_request(lm, None, None) and is_lm_request(lm, "lm-nf4", None)
    assert is_lm_request(encoder, None, "text-generation")  # forced: the LM build then says it is no causal LM
    assert not is_lm_request(encoder, "int8", None) and not is_lm_request(None, None, None)
    with pytest.raises(ConfigError, match=r"preset 'fast-cpu' builds encoders; .* choose one of lm-int4"):
        is_lm_request(lm, "fast-cpu", None)
    with pytest.raises(ConfigError, match=r"preset lm-int8 builds decoder LMs .* choose an encoder preset"):
        is_lm_request(encoder, "lm-int8", None)
    with pytest.raises(ConfigError, match="--task embeddings is an encoder task"):
        is_lm_request(lm, "lm-int4", "embeddings")
