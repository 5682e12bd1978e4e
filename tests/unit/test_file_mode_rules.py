"""One rule for the modes of what engineforge writes: open()'s (0o666 & ~umask), also through temporary files and
libraries that create 0600; what is published to the server is readable by everyone (engineforge/file_modes.py)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from engineforge.engines.engine_spec import EngineSpec
from engineforge.file_modes import atomic_write, created_mode, current_umask, follow_umask, make_readable
from engineforge.serve.published import CONFIG, replace_config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under the umask given by parametrize (indirect), restoring the old one after."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077], indirect=True)
def test_the_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask
    assert created_mode() == 0o666 & ~umask and created_mode(executable=True) == 0o777 & ~umask


@pytest.mark.parametrize("umask", [0o022, 0o027], indirect=True)
def test_an_atomic_write_gets_the_mode_open_gives(umask, tmp_path):
    (tmp_path / "plain.txt").write_text("x")
    atomic_write(tmp_path / "atomic.json", "{}")
    atomic_write(tmp_path / "atomic.bin", b"\0")
    assert mode(tmp_path / "atomic.json") == mode(tmp_path / "atomic.bin") == mode(tmp_path / "plain.txt")
    assert mode(tmp_path / "atomic.json") == 0o666 & ~umask
    assert (tmp_path / "atomic.json").read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == [
        "atomic.bin", "atomic.json", "plain.txt"]  # no temporary file left


@pytest.mark.parametrize("umask", [0o022, 0o027], indirect=True)
def test_engine_json_is_written_like_its_siblings(umask, tmp_path):
    spec = EngineSpec(labels=("a", "b"))
    path = spec.save(tmp_path)
    assert path == tmp_path / "engine.json" and mode(path) == 0o666 & ~umask
    assert EngineSpec.load(tmp_path).labels == ("a", "b")


@pytest.mark.parametrize("umask", [0o022, 0o027], indirect=True)
def test_follow_umask_repairs_what_safetensors_writes(umask, tmp_path):
    import torch
    from safetensors.torch import save_file

    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    save_file({"w": torch.zeros(2)}, str(checkpoint / "model.safetensors"))
    (checkpoint / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(checkpoint / "run.sh", 0o700)
    follow_umask(checkpoint)
    assert mode(checkpoint / "model.safetensors") == 0o666 & ~umask
    assert mode(checkpoint / "run.sh") == mode(checkpoint) == 0o777 & ~umask  # executables stay executable


@pytest.mark.parametrize("umask", [0o077], indirect=True)
def test_published_files_are_readable_by_the_server_user_whatever_the_umask(umask, tmp_path):
    model = tmp_path / "model"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").write_bytes(b"onnx")
    make_readable(model)
    assert mode(model / "1" / "model.onnx") == 0o644 and mode(model / "1") == 0o755
    replace_config(model, "name: 'm'\n")  # a version switch or tuning rewrites it in place
    assert mode(model / CONFIG) == 0o644
    atomic_write(model / "warmup.bin", b"\0", published=True)
    assert mode(model / "warmup.bin") == 0o644
