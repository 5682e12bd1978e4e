"""Export step: PyTorch -> ONNX (TorchScript exporter, dynamic batch/sequence axes), checked against torch."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from engineforge.errors import OutputMismatchError

from .config import ExportConfig
from .inference import file_mb, model_input_names, ort_logits, torch_logits
from .pipeline import BuildContext, register_step

# Exercise both padding and truncation in the export check when no eval data is at hand.
_CHECK_TEXTS = ("hello", "where is my order? it was due last week and nothing has arrived yet " * 3)


def _logits_only(model: Any, names: list[str]) -> Any:
    """Positional-args wrapper: the exporter needs a fixed input order and a single output."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            return self.model(**dict(zip(names, args, strict=True))).logits

    return LogitsOnly().eval()


def write_onnx(model: Any, names: list[str], args: tuple[Any, ...], path: Any, opset: int) -> None:
    """Export `model`'s logits with dynamic batch and sequence axes."""
    import torch

    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    # The TorchScript exporter is deliberate (dynamo needs onnxscript rewrites ORT's fusions don't match);
    # its tracer and deprecation warnings say nothing actionable to a user of build-engine.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*aten::index.*")
        torch.onnx.export(
            _logits_only(model, names), args, str(path), input_names=names, output_names=["logits"],
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
        )


@register_step(ExportConfig)
def export_onnx(ctx: BuildContext, config: ExportConfig) -> dict[str, Any]:
    import torch

    names = model_input_names(ctx.tokenizer)
    sample = ctx.tokenizer(["a short example", "a second, longer example sentence"], padding=True,
                           return_tensors="pt")
    args = tuple(sample[n] if n in sample else torch.zeros_like(sample["input_ids"]) for n in names)
    path = ctx.work_dir / "model.fp32.onnx"
    write_onnx(ctx.model, names, args, path, config.opset)
    texts = [e.text for e in ctx.eval_examples[:32]] or list(_CHECK_TEXTS)
    max_diff = check_against_torch(ctx, path, texts, config.atol, "ONNX export")
    ctx.onnx_path = path
    return {"file": path.name, "size_mb": file_mb(path), "opset": config.opset, "inputs": names,
            "max_abs_diff_vs_torch": float(f"{max_diff:.3g}")}


def check_against_torch(ctx: BuildContext, onnx_path: Any, texts: list[str], atol: float, what: str) -> float:
    """Raise OutputMismatchError naming the worst example if logits differ beyond `atol`."""
    max_len = ctx.config.max_sequence_length
    ref = torch_logits(ctx.model, ctx.tokenizer, texts, max_len)
    got = ort_logits(onnx_path, ctx.tokenizer, texts, max_len, ctx.config.intra_op_threads)
    diff = np.abs(ref - got)
    worst = int(np.argmax(diff.max(axis=1)))
    max_diff = float(diff.max())
    if not np.isfinite(got).all() or max_diff > atol:
        raise OutputMismatchError(
            f"{what} does not match PyTorch: max |logit difference| = {max_diff:.3g} > atol {atol:g} "
            f"on example {worst} ({texts[worst][:60]!r}): torch {np.round(ref[worst], 4).tolist()} "
            f"vs onnx {np.round(got[worst], 4).tolist()}"
        )
    return max_diff
