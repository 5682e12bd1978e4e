"""`export`: PyTorch -> ONNX (TorchScript exporter, dynamic batch/sequence axes), checked against PyTorch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engineforge.engines import model_input_names

from ..config import ENGINE, ONNX_GRAPH, PLAIN_ONNX, PORTABLE_ONNX, STAGE_EXPORT, TORCH_MODEL, StepConfig, require
from ..context import BuildContext
from ..files import file_mb
from ..onnx_export import check_against_torch, write_onnx
from ..step_output import StepOutput
from ..step_registry import register_step

# Exercise both padding and truncation in the export check when no eval data is at hand.
CHECK_TEXTS = ("hello", "where is my order? it was due last week and nothing has arrived yet " * 3)


@dataclass(frozen=True)
class ExportConfig(StepConfig):
    """Export the PyTorch model to ONNX with dynamic batch and sequence axes."""

    step_type: ClassVar[str] = "export"
    stage: ClassVar[int] = STAGE_EXPORT
    requires = frozenset({TORCH_MODEL})
    provides = frozenset({ONNX_GRAPH, PLAIN_ONNX, PORTABLE_ONNX, ENGINE})

    opset: int = 17
    # Tolerance for the export check: max |logit_onnx - logit_torch| on sample inputs.
    atol: float = 1e-3

    def __post_init__(self) -> None:
        require(14 <= self.opset <= 21, f"export.opset={self.opset} is unsupported; use 14..21 (17 tested)")
        require(self.atol > 0, f"export.atol must be > 0, got {self.atol}")


def check_texts(ctx: BuildContext) -> list[str]:
    """Up to 32 eval texts, or fixed texts that pad and truncate when there is no eval data."""
    return [e.text for e in ctx.eval_examples[:32]] or list(CHECK_TEXTS)


@register_step(ExportConfig)
def export_onnx(ctx: BuildContext, config: ExportConfig) -> StepOutput:
    import torch

    names = model_input_names(ctx.tokenizer)
    sample = ctx.tokenizer(["a short example", "a second, longer example sentence"], padding=True,
                           return_tensors="pt")
    args = tuple(sample[n] if n in sample else torch.zeros_like(sample["input_ids"]) for n in names)
    path = ctx.work_dir / "model.fp32.onnx"
    write_onnx(ctx.model, names, args, path, config.opset, "embeddings" if ctx.is_embedding else "logits",
               per_token=ctx.is_token_task)
    max_diff = check_against_torch(ctx.model, ctx.tokenizer, path, check_texts(ctx),
                                   max_length=ctx.config.max_sequence_length, threads=ctx.config.intra_op_threads,
                                   atol=config.atol, what="ONNX export")
    return StepOutput(onnx_path=path, plain_onnx_path=path, details={
        "file": path.name, "size_mb": file_mb(path), "opset": config.opset, "inputs": names,
        "max_abs_diff_vs_torch": float(f"{max_diff:.3g}")})
