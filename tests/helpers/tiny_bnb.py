"""A tiny bitsandbytes NF4 build (checkpoint -> bnb_4bit -> validate -> bundle), cached once per session.

bitsandbytes' CPU kernel needs out_features % 32 == 0 and in_features % 64 == 0, so this model is
hidden 64 / FFN 128 (the default tiny checkpoint's hidden 32 would leave nothing to quantize).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.tiny_checkpoint import make_tiny_checkpoint, write_eval_data


def cached_checkpoint_64(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(hidden-64 checkpoint, eval data labelled by its own fp32 predictions), made once per session."""
    root = tmp_path_factory.getbasetemp() / "tiny_bert_64"
    checkpoint, eval_data, done = root / "tiny-bert-64", root / "eval.jsonl", root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        make_tiny_checkpoint(checkpoint, hidden=64, layers=2, heads=2)
        write_eval_data(eval_data, checkpoint)
        done.touch()
    return checkpoint, eval_data


def cached_bnb_build(tmp_path_factory: pytest.TempPathFactory, name: str = "tiny_bnb_build") -> tuple[Path, dict]:
    """(build output dir, build report); the bundle is `<dir>/engine`, published to `<dir>/../repo` as
    `tinybnb`. Built once per pytest session."""
    import json

    from engineforge.build.config import BuildConfig
    from engineforge.build.runner import run_build
    from engineforge.build.steps import Bnb4BitConfig, PublishConfig, ValidateConfig

    root = tmp_path_factory.getbasetemp() / name
    out, done = root / "build", root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        checkpoint, eval_data = cached_checkpoint_64(tmp_path_factory)
        # A loose budget: this asserts the plumbing, not NF4 accuracy on a random 2-layer model.
        steps = (Bnb4BitConfig(), ValidateConfig(max_accuracy_drop=30.0, min_agreement=0.7),
                 PublishConfig(repo_dir=str(root / "repo"), model_name="tinybnb"))
        run_build(BuildConfig(checkpoint=checkpoint, output_dir=out, steps=steps, eval_data=eval_data,
                              intra_op_threads=1))
        done.touch()
    return out, json.loads((out / "build_report.json").read_text())
