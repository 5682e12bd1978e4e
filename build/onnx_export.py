"""PyTorch -> ONNX with dynamic batch and sequence axes, and the check that an ONNX graph still matches PyTorch.

Used by the export step, by graph_optimize's check, and by prune's latency probe.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engineforge.engines.registry import REFERENCE_RUNTIME
from engineforge.errors import OutputMismatchError


def _logits_only(model: Any, names: Sequence[str]) -> Any:
    """Positional-args wrapper: the exporter needs a fixed input order and a single output."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            return self.model(**dict(zip(names, args, strict=True))).logits

    return LogitsOnly().eval()


def write_onnx(model: Any, names: Sequence[str], args: tuple[Any, ...], path: Path, opset: int,
               output_name: str = "logits", per_token: bool = False) -> None:
    """Export `model`'s logits (an embedding model's pooled embeddings) with dynamic batch and sequence axes."""
    import torch

    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output_name] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    # The TorchScript exporter is deliberate (dynamo needs onnxscript rewrites ORT's fusions don't match);
    # its tracer and deprecation warnings say nothing actionable to a user of build-engine.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*")
        torch.onnx.export(
            _logits_only(model, names), args, str(path), input_names=list(names), output_names=[output_name],
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
        )


def check_against_torch(model: Any, tokenizer: Any, onnx_path: Path, texts: Sequence[str], *, max_length: int,
                        threads: int, atol: float, what: str) -> float:
    """Max |logit difference| between `model` and the ONNX graph in ONNX Runtime; raises OutputMismatchError
    naming the worst example beyond `atol`."""
    from engineforge.engines import TorchEngine, engine_logits, load_engine, model_input_names

    reference = engine_logits(TorchEngine(model, model_input_names(tokenizer)), tokenizer, texts, max_length)
    got = engine_logits(load_engine(onnx_path, REFERENCE_RUNTIME, threads), tokenizer, texts, max_length)
    diff = np.abs(reference - got)
    worst = int(np.argmax(diff.reshape(len(diff), -1).max(axis=1)))
    max_diff = float(diff.max())
    if not np.isfinite(got).all() or max_diff > atol:
        raise OutputMismatchError(
            f"{what} does not match PyTorch: max |logit difference| = {max_diff:.3g} > atol {atol:g} "
            f"on example {worst} ({texts[worst][:60]!r}): torch "
            f"{np.round(reference[worst].reshape(-1)[:8], 4).tolist()} vs onnx "
            f"{np.round(got[worst].reshape(-1)[:8], 4).tolist()}"
        )
    return max_diff
