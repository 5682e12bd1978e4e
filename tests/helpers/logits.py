"""Logits of an engine file or a torch model for texts, through engineforge's engine layer (as served)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engineforge.engines import TorchEngine, engine_logits, load_engine, model_input_names


def file_logits(path: Path, tokenizer: Any, texts: Sequence[str], runtime: str = "onnxruntime",
                max_length: int = 128, threads: int = 1) -> np.ndarray:
    return engine_logits(load_engine(path, runtime, threads), tokenizer, texts, max_length)


def torch_logits(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int = 128) -> np.ndarray:
    return engine_logits(TorchEngine(model, model_input_names(tokenizer)), tokenizer, texts, max_length)
