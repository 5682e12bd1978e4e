"""What the torch-bnb loader decides from a saved directory alone: the head's class from `architectures`, the
pooling of an embedder from `pooling.json`, and the token inputs the engine takes (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engineforge.engines.pooling import POOLING_FILE, Pooling, load_pooling, save_pooling, sentence_embedder
from engineforge.engines.torch_engine import auto_class, forward_input_names, load_torch_bnb
from engineforge.errors import EngineLoadError


@pytest.mark.parametrize(("architecture", "expected"), [
    ("BertForSequenceClassification", "AutoModelForSequenceClassification"),
    ("DebertaV2ForTokenClassification", "AutoModelForTokenClassification"),
    ("BertModel", "AutoModel"),
    ("MPNetModel", "AutoModel"),
])
def test_the_head_is_read_from_the_architecture(architecture, expected):
    assert auto_class(architecture).__name__ == expected


def test_pooling_round_trips_and_a_bad_file_is_refused(tmp_path):
    save_pooling(tmp_path, Pooling("cls", True, "1_Pooling/config.json"))
    assert load_pooling(tmp_path) == Pooling("cls", True, "1_Pooling/config.json")
    (tmp_path / POOLING_FILE).write_text(json.dumps({"mode": "max", "normalize": False}))
    with pytest.raises(EngineLoadError, match=r"pooling\.json: expected .*'mean', 'cls'.*rebuild"):
        load_pooling(tmp_path)


def _directory(path: Path, architectures: list[str] | None) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "bert"} | (
        {"architectures": architectures} if architectures is not None else {})))
    return path


def test_an_embedder_directory_without_its_pooling_is_refused_before_loading(tmp_path):
    with pytest.raises(EngineLoadError, match=r"pooling\.json: missing; an embedding engine directory says how"):
        load_torch_bnb(_directory(tmp_path / "emb", ["BertModel"]), 1)
    with pytest.raises(EngineLoadError, match="names no architecture"):
        load_torch_bnb(_directory(tmp_path / "none", None), 1)


def _tiny(model_type: str, **extra):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(model_type, vocab_size=30, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, **extra)
    return AutoModel.from_config(config).eval()


def test_an_embedder_takes_its_encoders_inputs_and_pools_as_told():
    import torch

    bert, mpnet = _tiny("bert"), _tiny("mpnet")
    assert forward_input_names(sentence_embedder(bert, Pooling())) == ("input_ids", "attention_mask",
                                                                       "token_type_ids")
    assert forward_input_names(sentence_embedder(mpnet, Pooling())) == ("input_ids", "attention_mask")
    # DeBERTa-v3 style: type_vocab_size 0 ignores token types, as the build's tokenizer inputs do.
    assert forward_input_names(_tiny("deberta-v2", type_vocab_size=0)) == ("input_ids", "attention_mask")

    ids, mask = torch.tensor([[2, 5, 6, 3, 0]]), torch.tensor([[1, 1, 1, 1, 0]])
    with torch.inference_mode():
        hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = sentence_embedder(bert, Pooling("mean", True))(ids, mask).logits
        cls = sentence_embedder(bert, Pooling("cls", False))(ids, mask).logits
    expected = torch.nn.functional.normalize(hidden[:, :4].mean(1), dim=-1)  # padding left out of the mean
    torch.testing.assert_close(mean, expected)
    torch.testing.assert_close(cls, hidden[:, 0])
