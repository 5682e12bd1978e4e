"""publish_engine into a model repository: layout, versioning, atomicity, clear errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from engineforge.errors import RepositoryError
from engineforge.serve import repository
from engineforge.serve.engine_spec import EngineSpec
from engineforge.serve.repository import publish_engine
from engineforge.serve.repository_listing import list_published
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its content, to prove a failed publish changed nothing."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def no_staging_left(repo: Path) -> bool:
    return not [p for p in repo.parent.iterdir() if ".publish-" in p.name]


def test_publish_layout(tiny_bundle, tmp_path):  # noqa: F811
    repo = tmp_path / "repo"
    published = publish_engine(tiny_bundle, repo, "clf", max_batch_size=8, instances=2)
    assert (published.name, published.version, published.engine_model) == ("clf", 1, "clf_engine")
    engine_dir = repo / "clf_engine" / "1"
    assert {p.name for p in engine_dir.iterdir()} == {"model.py", "model.onnx", "engine.json"}
    source = Path(repository.__file__).parent / "triton" / "engine_model.py"
    assert (engine_dir / "model.py").read_text() == source.read_text()
    tokenizer_dir = repo / "clf_tokenizer" / "1"
    assert {p.name for p in tokenizer_dir.iterdir()} == {"model.py", "engine.json", "tokenizer"}
    assert (tokenizer_dir / "tokenizer" / "tokenizer.json").is_file()
    assert (repo / "clf" / "1").is_dir() and not list((repo / "clf" / "1").iterdir())
    for name in published.model_names:
        config = text_format.Parse((repo / name / "config.pbtxt").read_text(), pb.ModelConfig())
        assert config.name == name and config.max_batch_size == 8
    engine_config = text_format.Parse((repo / "clf_engine" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert engine_config.instance_group[0].count == 2
    manifest = json.loads((repo / "clf_engine" / "versions.json").read_text())
    assert manifest["versions"]["1"]["build_id"] == "tiny-build-1"
    assert no_staging_left(repo)


def test_second_publish_adds_version_and_keeps_first(tiny_bundle, tmp_path):  # noqa: F811
    repo = tmp_path / "repo"
    publish_engine(tiny_bundle, repo, "clf")
    before = snapshot(repo / "clf_engine" / "1")
    second = tmp_path / "bundle2"
    shutil.copytree(tiny_bundle, second)
    spec = EngineSpec.load(second)
    EngineSpec.from_dict(spec.to_dict() | {"build_id": "tiny-build-2"}).save(second)
    published = publish_engine(second, repo, "clf")
    assert published.version == 2 and published.build_id == "tiny-build-2"
    assert snapshot(repo / "clf_engine" / "1") == before
    assert EngineSpec.load(repo / "clf_engine" / "2").build_id == "tiny-build-2"
    models = {m.name: m for m in list_published(repo)}
    assert set(models) == {"clf", "clf_engine", "clf_tokenizer"}
    assert models["clf"].kind == "ensemble" and models["clf_engine"].kind == "python"
    assert models["clf_tokenizer"].versions == (1, 2) and models["clf_tokenizer"].latest_version == 2
    assert models["clf_engine"].builds == {1: "tiny-build-1", 2: "tiny-build-2"}
    # default version policy (latest 1) means the newest version serves
    config = text_format.Parse((repo / "clf" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert not config.HasField("version_policy")


@pytest.mark.parametrize("breakage", ["no_model", "no_tokenizer", "bad_spec", "no_bundle"])
def test_broken_bundle_leaves_repository_unchanged(tiny_bundle, tmp_path, breakage):  # noqa: F811
    repo = tmp_path / "repo"
    publish_engine(tiny_bundle, repo, "clf")
    before = snapshot(repo)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    if breakage == "no_model":
        (broken / "model.onnx").unlink()
    elif breakage == "no_tokenizer":
        shutil.rmtree(broken / "tokenizer")
    elif breakage == "bad_spec":
        (broken / "engine.json").write_text('{"labels": []}')
    else:
        shutil.rmtree(broken)
    with pytest.raises(RepositoryError, match=str(broken)):
        publish_engine(broken, repo, "clf")
    assert snapshot(repo) == before and no_staging_left(repo)


def test_failure_while_staging_or_committing_rolls_back(tiny_bundle, tmp_path, monkeypatch):  # noqa: F811
    repo = tmp_path / "repo"
    publish_engine(tiny_bundle, repo, "clf")
    before = snapshot(repo)
    real_copy, real_rename = repository._copy, os.rename

    def failing_copy(src, dst):
        if Path(src).name == "tokenizer":
            raise OSError("disk full")
        real_copy(src, dst)

    monkeypatch.setattr(repository, "_copy", failing_copy)
    with pytest.raises(RepositoryError, match="left unchanged: disk full"):
        publish_engine(tiny_bundle, repo, "clf")
    assert snapshot(repo) == before and no_staging_left(repo)
    monkeypatch.setattr(repository, "_copy", real_copy)

    calls = []

    def failing_rename(src, dst):  # the ensemble is committed last: fail there, after the others moved in
        calls.append(dst)
        if Path(dst).parent.name == "clf":
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(repository.os, "rename", failing_rename)
    with pytest.raises(RepositoryError, match="rename failed"):
        publish_engine(tiny_bundle, repo, "clf")
    assert len(calls) == 3 and snapshot(repo) == before and no_staging_left(repo)


def test_repository_errors(tiny_bundle, tmp_path):  # noqa: F811
    a_file = tmp_path / "repo_file"
    a_file.write_text("x")
    with pytest.raises(RepositoryError, match="is a file"):
        publish_engine(tiny_bundle, a_file, "clf")
    with pytest.raises(RepositoryError, match="model name"):
        publish_engine(tiny_bundle, tmp_path / "repo", "bad/name")
    foreign = tmp_path / "repo" / "clf_engine"
    foreign.mkdir(parents=True)
    with pytest.raises(RepositoryError, match="not published by engineforge"):
        publish_engine(tiny_bundle, tmp_path / "repo", "clf")
    with pytest.raises(RepositoryError, match="does not exist"):
        list_published(tmp_path / "missing")
