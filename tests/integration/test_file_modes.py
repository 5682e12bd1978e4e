"""What a build, the demo fine-tune and a publish write follows the one mode rule (engineforge/file_modes.py): files
as open() creates them under the umask, even where a library writes 0600 (safetensors, onnxruntime's calibration
cache, mkstemp); a published model readable by the server's user whatever the umask."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from engineforge.build.config import BuildConfig
from engineforge.build.runner import run_build
from engineforge.build.steps import Bnb4BitConfig, ExportConfig, StaticInt8Config, ValidateConfig
from engineforge.demo.finetune import FinetuneSettings, finetune
from engineforge.serve.repository import publish_engine
from tests.helpers.tiny_checkpoint import EVAL_TEXTS, make_tiny_checkpoint, write_eval_data
from tests.helpers.tiny_families import make_embedding_checkpoint

# Not the usual 022, so that a hard-coded 0644 would fail as surely as mkstemp's 0600.
UMASK = 0o027
# These tests check file modes, not accuracy.
ANY_ACCURACY = ValidateConfig(max_accuracy_drop=100.0, min_agreement=0.0)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in sorted(root.rglob("*")) if p.is_file()}


def off_rule(root: Path) -> dict[str, str]:
    """Files under root whose mode is not what open() gives under UMASK."""
    return {name: oct(m) for name, m in modes(root).items() if m != 0o666 & ~UMASK}


def test_a_static_int8_build_and_its_publish_follow_the_rule(tiny_checkpoint, tiny_eval_data, tmp_path):
    calibration = tmp_path / "calibration.jsonl"
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in EVAL_TEXTS))
    out = tmp_path / "out"
    steps = (ExportConfig(), StaticInt8Config(fallback=False, check_engines=False), ANY_ACCURACY)
    with umask(UMASK):
        report = run_build(BuildConfig(checkpoint=tiny_checkpoint, output_dir=out, steps=steps,
                                       eval_data=tiny_eval_data, calibration_data=calibration, intra_op_threads=1))
    assert report.status == "ok"
    written = modes(out)
    assert {"work/calibration_ranges.json", "engine/engine.json", "engine/model.onnx"} <= set(written)
    assert off_rule(out) == {}

    # The server may run as another user: under a umask that keeps everything private, the published model is
    # still readable (files) and listable (directories) by everyone.
    repo = tmp_path / "repo"
    with umask(0o077):
        publish_engine(out / "engine", repo, "clf", max_batch_size=8, wait_s=None)
    paths = [repo, *repo.rglob("*")]
    assert any(p.name == "engine.json" for p in paths) and any(p.name == "config.pbtxt" for p in paths)
    unreadable = [str(p.relative_to(repo)) for p in paths if not p.name.startswith(".engineforge-publish")
                  and stat.S_IMODE(p.stat().st_mode) & (0o055 if p.is_dir() else 0o044) != (0o055 if p.is_dir()
                                                                                           else 0o044)]
    assert unreadable == []


def test_a_bnb_build_ships_its_save_pretrained_directory_by_the_rule(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "tiny-64", hidden=64)  # bitsandbytes' CPU kernel needs 64
    out = tmp_path / "out"
    with umask(UMASK):
        report = run_build(BuildConfig(checkpoint=checkpoint, output_dir=out, steps=(Bnb4BitConfig(), ANY_ACCURACY),
                                       eval_data=write_eval_data(tmp_path / "eval.jsonl", checkpoint),
                                       intra_op_threads=1))
    assert report.status == "ok"
    assert "engine/model/model.safetensors" in modes(out)
    assert off_rule(out) == {}


def test_the_demo_checkpoint_is_written_by_the_rule(tmp_path):
    base = make_embedding_checkpoint(tmp_path / "base", "bert")  # a bare encoder, as all-MiniLM-L6-v2 is
    out = tmp_path / "demo-checkpoint"
    with umask(UMASK):
        finetune(out, FinetuneSettings(epochs=1, batch_size=64, max_length=16), base=base)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(modes(out))
    assert off_rule(out) == {}
