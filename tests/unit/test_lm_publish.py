"""publish_lm_bundle without Triton: the version directories it writes, the decoupled config.pbtxt re-parsed with
Triton's own protobuf schema, the hashes it records, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from engineforge.errors import RepositoryError
from engineforge.lm.bundle import LMEngineSpec
from engineforge.serve import lm_compat
from engineforge.serve.lm_publish import LM_HASH_KEYS, publish_lm_bundle
from engineforge.serve.lm_requests import INPUTS, OUTPUTS, LMLimits
from engineforge.serve.published import file_sha256


def fake_bundle(path: Path, max_length: int = 64, max_batch: int = 4) -> Path:
    """The files of an LM bundle (publishing copies and hashes them; it never loads the model)."""
    (path / "model").mkdir(parents=True)
    (path / "model" / "config.json").write_text("{}")
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "tokenizer.json").write_text("{}")
    LMEngineSpec(runtime="torch", precision="fp32", family="llama", max_length=max_length, eos_token_ids=[0],
                 max_batch=max_batch).save(path)
    return path


def parse(path: Path) -> pb.ModelConfig:
    return text_format.Parse(path.read_text(), pb.ModelConfig())


def test_publish_writes_a_decoupled_python_model(tmp_path: Path) -> None:
    bundle = fake_bundle(tmp_path / "bundle")
    version_dir = publish_lm_bundle(bundle, tmp_path / "repo", "chat", max_tokens_limit=32, instances=2)
    assert version_dir == tmp_path / "repo" / "chat" / "1"
    for name in ("model.py", "lm_engine.json", "model/config.json", "tokenizer/tokenizer.json"):
        assert (version_dir / name).is_file(), name
    config = parse(tmp_path / "repo" / "chat" / "config.pbtxt")
    assert config.name == "chat" and config.backend == "python" and config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    inputs = {i.name: i for i in config.input}
    assert set(inputs) == set(INPUTS) | set(lm_compat.INPUTS) and all(i.optional for i in inputs.values())
    assert pb.DataType.Name(inputs["stream"].data_type) == "TYPE_BOOL"  # Triton's LLM layout too (lm_compat.py)
    assert pb.DataType.Name(inputs["TEXT"].data_type) == "TYPE_STRING" and list(inputs["TEXT"].dims) == [1]
    assert pb.DataType.Name(inputs["MAX_TOKENS"].data_type) == "TYPE_INT32"
    assert pb.DataType.Name(inputs["SEED"].data_type) == "TYPE_INT64"
    assert pb.DataType.Name(inputs["TEMPERATURE"].data_type) == "TYPE_FP32"
    assert list(inputs["STOP"].dims) == [-1] and list(inputs["INPUT_IDS"].dims) == [-1]
    outputs = {o.name: o for o in config.output}
    assert set(outputs) == set(OUTPUTS) | {"text_output"}
    assert pb.DataType.Name(outputs["TOKEN_IDS"].data_type) == "TYPE_INT64"
    assert pb.DataType.Name(outputs["COMPLETION_TOKENS"].data_type) == "TYPE_INT32"
    params = {key: value.string_value for key, value in config.parameters.items()}
    limits = LMLimits.from_parameters(params)
    assert (limits.max_prompt_tokens, limits.max_tokens, limits.max_sequences, limits.max_length) == (63, 32, 4, 64)
    assert params["task"] == "text-generation" and params["runtime"] == "torch"


def test_versions_increase_and_hashes_are_recorded(tmp_path: Path) -> None:
    bundle = fake_bundle(tmp_path / "bundle")
    repo = tmp_path / "repo"
    assert publish_lm_bundle(bundle, repo, "chat").name == "1"
    (bundle / "model" / "config.json").write_text('{"changed": true}')
    assert publish_lm_bundle(bundle, repo, "chat", max_sequences=2).name == "2"
    manifest = json.loads((repo / "chat" / "versions.json").read_text())
    assert manifest["kind"] == "lm" and set(manifest["versions"]) == {"1", "2"}
    for version in ("1", "2"):
        record = manifest["versions"][version]
        assert record[LM_HASH_KEYS["model"]] == file_sha256(repo / "chat" / version / "model")
        assert record[LM_HASH_KEYS["tokenizer"]] == file_sha256(repo / "chat" / version / "tokenizer")
    assert manifest["versions"]["1"]["model_sha256"] != manifest["versions"]["2"]["model_sha256"]
    assert parse(repo / "chat" / "config.pbtxt").parameters["lm.max_sequences"].string_value == "2"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo.publish-")]  # staging removed


def test_refusals(tmp_path: Path) -> None:
    bundle = fake_bundle(tmp_path / "bundle")
    repo = tmp_path / "repo"
    (repo / "theirs").mkdir(parents=True)
    with pytest.raises(RepositoryError, match="not an LM engineforge published"):
        publish_lm_bundle(bundle, repo, "theirs")
    with pytest.raises(RepositoryError, match="at most 63"):
        publish_lm_bundle(bundle, repo, "chat", max_prompt_tokens=64)
    with pytest.raises(RepositoryError, match=r"NAME\.vN\.engine"):
        publish_lm_bundle(bundle, repo, "chat.v1.engine")
    with pytest.raises(RepositoryError, match="not an LM engine bundle"):
        publish_lm_bundle(tmp_path / "repo", repo, "chat")
    (bundle / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(RepositoryError, match="tokenizer files"):
        publish_lm_bundle(bundle, repo, "chat")
    assert not (repo / "chat").exists()
