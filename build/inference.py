"""Run the reference (PyTorch) and the engine (ONNX Runtime) on the same tokenized batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import batches, encode


def model_input_names(tokenizer: Any) -> list[str]:
    """The inputs the engine takes, in a fixed order (BERT's forward order)."""
    wanted = ("input_ids", "attention_mask", "token_type_ids")
    names = [n for n in wanted if n in getattr(tokenizer, "model_input_names", wanted)]
    return names if "input_ids" in names else list(wanted)


def torch_logits(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 32) -> np.ndarray:
    import torch

    names = model_input_names(tokenizer)
    outputs = []
    with torch.inference_mode():
        for chunk in batches(texts, batch_size):
            arrays = encode(tokenizer, chunk, max_length, names)
            tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
            outputs.append(model(**tensors).logits.float().numpy())
    return np.concatenate(outputs)


def ort_session(onnx_path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def ort_logits(
    onnx_path: Path, tokenizer: Any, texts: Sequence[str], max_length: int, threads: int, batch_size: int = 32
) -> np.ndarray:
    from .runtimes import runtime_logits

    return runtime_logits("onnxruntime", onnx_path, tokenizer, texts, max_length, threads, batch_size)


def file_mb(path: Path) -> float:
    """Size of an ONNX model including external-data files beside it, or of a model directory."""
    path = Path(path)
    if path.is_dir():
        return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6, 2)
    total = path.stat().st_size
    data = path.with_suffix(path.suffix + ".data")
    if data.exists():
        total += data.stat().st_size
    return round(total / 1e6, 2)


def engine_logits(ctx: Any, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Logits of the current engine in the runtime that will serve it."""
    max_len, threads = ctx.config.max_sequence_length, ctx.config.intra_op_threads
    if ctx.runtime == "torch-bnb":
        return torch_logits(ctx.model, ctx.tokenizer, texts, max_len, batch_size)
    from .runtimes import runtime_logits

    return runtime_logits(ctx.runtime, ctx.onnx_path, ctx.tokenizer, texts, max_len, threads, batch_size)
