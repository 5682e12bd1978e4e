"""publish_engine into a model repository: layout, versioning, atomicity, clear errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import RepositoryError
from engineforge.serve import repository, staging
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
    # one-hop (the default): one model per version, the engine, with the bundle's tokenizer beside it
    assert published.version_models == ("clf.v1.engine",) and not (repo / "clf.v1.tokenizer").exists()
    engine_dir = repo / "clf.v1.engine" / "1"
    assert {p.name for p in engine_dir.iterdir()} == {"model.py", "model.onnx", "engine.json", "tokenizer",
                                                      "__pycache__"}
    assert (engine_dir / "tokenizer" / "tokenizer.json").is_file()
    source = Path(repository.__file__).parent / "triton" / "engine_model.py"
    assert (engine_dir / "model.py").read_text() == source.read_text()
    for entry in ("clf", "clf_engine"):  # ensembles: an empty version directory, and nothing else to load
        assert (repo / entry / "1").is_dir() and not list((repo / entry / "1").iterdir())
    for name in published.model_names:
        config = text_format.Parse((repo / name / "config.pbtxt").read_text(), pb.ModelConfig())
        # entry points take the batch as an explicit dim (max_batch_size 0); the models behind them batch up to 8
        assert config.name == name and config.max_batch_size == (0 if name in ("clf", "clf_engine") else 8)
        assert list(config.version_policy.specific.versions) == [1]
    engine_config = text_format.Parse((repo / "clf.v1.engine" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert engine_config.instance_group[0].count == 2
    manifest = json.loads((repo / "clf" / "versions.json").read_text())
    record = manifest["versions"]["1"]
    assert record["build_id"] == "tiny-build-1" and len(record["model_sha256"]) == len(record["tokenizer_sha256"]) == 64
    assert json.loads((repo / "clf.v1.engine" / "versions.json").read_text())["versions"]["1"] == record
    # what a rollback to version 1 restores
    assert (repo / "clf" / "entries" / "1" / "clf.pbtxt").read_text() == (repo / "clf" / "config.pbtxt").read_text()
    assert no_staging_left(repo)


def test_two_hop_publish_layout(tiny_bundle, tmp_path):  # noqa: F811
    repo = tmp_path / "repo"
    published = publish_engine(tiny_bundle, repo, "clf", text_path="two-hop")
    assert published.version_models == ("clf.v1.tokenizer", "clf.v1.engine")
    engine_dir = repo / "clf.v1.engine" / "1"
    assert {p.name for p in engine_dir.iterdir()} == {"model.py", "model.onnx", "engine.json", "__pycache__"}
    tokenizer_dir = repo / "clf.v1.tokenizer" / "1"
    assert {p.name for p in tokenizer_dir.iterdir()} == {"model.py", "engine.json", "tokenizer", "__pycache__"}
    assert (tokenizer_dir / "tokenizer" / "tokenizer.json").is_file()
    config = text_format.Parse((repo / "clf" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert [s.model_name for s in config.ensemble_scheduling.step] == ["clf.v1.tokenizer", "clf.v1.engine"]
    assert config.parameters["text_path"].string_value == "two-hop"
    with pytest.raises(RepositoryError, match="text_path 'both'"):
        publish_engine(tiny_bundle, repo, "clf", text_path="both")


def test_second_publish_adds_version_and_keeps_first(tiny_bundle, tmp_path):  # noqa: F811
    repo = tmp_path / "repo"
    publish_engine(tiny_bundle, repo, "clf")
    before = snapshot(repo / "clf.v1.engine")
    second = tmp_path / "bundle2"
    shutil.copytree(tiny_bundle, second)
    spec = EngineSpec.load(second)
    EngineSpec.from_dict(spec.to_dict() | {"build_id": "tiny-build-2"}).save(second)
    published = publish_engine(second, repo, "clf")
    assert published.version == 2 and published.build_id == "tiny-build-2"
    assert snapshot(repo / "clf.v1.engine") == before
    assert EngineSpec.load(repo / "clf.v2.engine" / "2").build_id == "tiny-build-2"
    models = {m.name: m for m in list_published(repo)}
    assert set(models) == {"clf", "clf_engine", "clf.v1.engine", "clf.v2.engine"}
    assert models["clf"].kind == "ensemble" and models["clf_engine"].kind == "ensemble"
    assert models["clf.v2.engine"].kind == "python" and models["clf"].versions == (1, 2)
    assert models["clf"].builds == {1: "tiny-build-1", 2: "tiny-build-2"}
    # the entry points now run version 2 alone
    config = text_format.Parse((repo / "clf" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert list(config.version_policy.specific.versions) == [2]
    assert {s.model_name for s in config.ensemble_scheduling.step} == {"clf.v2.engine"}
    assert (repo / "clf" / "entries" / "1" / "clf_engine.pbtxt").is_file()


def test_older_layout_and_version_names_are_refused(tiny_bundle, tmp_path):  # noqa: F811
    repo = tmp_path / "repo"
    (repo / "clf_engine").mkdir(parents=True)  # an engine model published by an older engineforge
    (repo / "clf_engine" / "versions.json").write_text(json.dumps({"model": "clf_engine", "kind": "engine",
                                                                   "versions": {}}))
    with pytest.raises(RepositoryError, match="layout of an older engineforge"):
        publish_engine(tiny_bundle, repo, "clf")
    with pytest.raises(RepositoryError, match=r"looks like one version's model"):
        publish_engine(tiny_bundle, repo, "other.v2.engine")


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
    real_copy, real_rename = staging.copy_file, os.rename

    def failing_copy(src, dst):
        if Path(src).name == "tokenizer":
            raise OSError("disk full")
        real_copy(src, dst)

    monkeypatch.setattr(staging, "copy_file", failing_copy)
    with pytest.raises(RepositoryError, match="left unchanged: disk full"):
        publish_engine(tiny_bundle, repo, "clf")
    assert snapshot(repo) == before and no_staging_left(repo)
    monkeypatch.setattr(staging, "copy_file", real_copy)

    calls = []

    def failing_rename(src, dst):  # the text entry point is committed last: fail there, after the others moved in
        calls.append(dst)
        if Path(dst).parent.name == "clf":
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(staging.os, "rename", failing_rename)
    with pytest.raises(RepositoryError, match="rename failed"):
        publish_engine(tiny_bundle, repo, "clf")
    # the version's engine model (a new directory), the ids entry point's version, then the text entry's: refused
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
