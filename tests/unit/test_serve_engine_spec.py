"""EngineSpec: the engine.json contract shared with the build pipeline."""

from __future__ import annotations

import json

import pytest

from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import ConfigError

LABELS = ["order_status", "refund", "shipping"]


def test_roundtrip_through_file(tmp_path):
    spec = EngineSpec(labels=LABELS, precision="int8-dynamic", build_id="b1", vocab_size=30522)
    path = spec.save(tmp_path)
    assert path == tmp_path / "engine.json"
    loaded = EngineSpec.load(tmp_path)
    assert loaded == spec
    assert loaded.labels == tuple(LABELS) and loaded.num_labels == 3
    data = json.loads(path.read_text())
    assert data["format_version"] == 1 and data["labels"] == LABELS and data["runtime"] == "onnxruntime"


def test_unknown_keys_are_kept(tmp_path):
    data = EngineSpec(labels=LABELS).to_dict() | {"metrics": {"f1": 0.9}}
    (tmp_path / "engine.json").write_text(json.dumps(data))
    spec = EngineSpec.load(tmp_path / "engine.json")
    assert spec.extra == {"metrics": {"f1": 0.9}}
    assert json.loads(spec.to_json())["metrics"] == {"f1": 0.9}
    assert "vocab_size" not in json.loads(spec.to_json())


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"labels": []}, "labels"),
        ({"labels": ["a", "a"]}, "labels"),
        ({"format_version": 2}, "format_version"),
        ({"runtime": "tvm"}, "runtime"),
        ({"runtime": "tensorrt"}, "tensorrt"),
        ({"input_names": ["input_ids"]}, "input_names"),
        ({"max_sequence_length": 1024}, "max_sequence_length"),
        ({"intra_op_threads": -1}, "intra_op_threads"),
        ({"model_file": "../model.onnx"}, "model_file"),
        ({"max_position_embeddings": "512"}, "max_position_embeddings"),
    ],
)
def test_invalid_field_names_file_and_field(tmp_path, change, field):
    data = EngineSpec(labels=LABELS).to_dict() | change
    (tmp_path / "engine.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        EngineSpec.load(tmp_path)
    assert str(tmp_path / "engine.json") in str(info.value)
    assert f"'{field}'" in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        EngineSpec.load(tmp_path)
    (tmp_path / "engine.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        EngineSpec.load(tmp_path)
    (tmp_path / "engine.json").write_text('{"precision": "fp32"}')
    with pytest.raises(ConfigError, match="'labels' is missing"):
        EngineSpec.load(tmp_path)
