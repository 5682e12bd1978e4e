"""`validate`: the engine, opened as it will be served, against the fp32 PyTorch original within the budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from engineforge import progress
from engineforge.engines import engine_logits, load_engine
from engineforge.engines.registry import REFERENCE_RUNTIME
from engineforge.engines.tensorrt_engine import NoGpuError
from engineforge.errors import DataError

from ..accuracy import DEFAULT_BUDGET, Budget
from ..config import ENGINE, EVAL_DATA, STAGE_VALIDATE, StepConfig, require
from ..context import BuildContext
from ..step_registry import register_step


@dataclass(frozen=True)
class ValidateConfig(StepConfig):
    """Compare the engine with the fp32 PyTorch original on labelled eval data; enforce the budget."""

    step_type: ClassVar[str] = "validate"
    stage: ClassVar[int] = STAGE_VALIDATE
    requires = frozenset({ENGINE, EVAL_DATA})

    # Budget: accuracy may drop at most this many percentage points below fp32 ...
    max_accuracy_drop: float = DEFAULT_BUDGET.max_accuracy_drop
    # ... and the engine's argmax must agree with fp32's on at least this fraction of examples.
    min_agreement: float = DEFAULT_BUDGET.min_agreement
    # Embedding models: cosine to the fp32 embeddings (mean, worst text) and recall@10 drop in points.
    min_cosine_mean: float = DEFAULT_BUDGET.min_cosine_mean
    min_cosine_worst: float = DEFAULT_BUDGET.min_cosine_worst
    max_recall_drop: float = DEFAULT_BUDGET.max_recall_drop
    batch_size: int = 32
    # None = every example of the eval file.
    max_examples: int | None = None

    def __post_init__(self) -> None:
        require(0 <= self.max_accuracy_drop <= 100,
                f"validate.max_accuracy_drop={self.max_accuracy_drop}: give percentage points in [0, 100], e.g. 1.0")
        require(0 <= self.min_agreement <= 1,
                f"validate.min_agreement={self.min_agreement}: give a fraction in [0, 1], e.g. 0.98")
        for name in ("min_cosine_mean", "min_cosine_worst"):
            require(-1 <= getattr(self, name) <= 1, f"validate.{name}={getattr(self, name)}: give a cosine in "
                                                    "[-1, 1], e.g. 0.99")
        require(0 <= self.max_recall_drop <= 100,
                f"validate.max_recall_drop={self.max_recall_drop}: give percentage points in [0, 100], e.g. 2")
        require(self.batch_size >= 1, f"validate.batch_size must be >= 1, got {self.batch_size}")
        require(self.max_examples is None or self.max_examples >= 1,
                f"validate.max_examples must be >= 1 or omitted, got {self.max_examples}")

    @property
    def budget(self) -> Budget:
        return Budget(self.max_accuracy_drop, self.min_agreement, self.min_cosine_mean, self.min_cosine_worst,
                      self.max_recall_drop)


@register_step(ValidateConfig)
def validate_accuracy(ctx: BuildContext, config: ValidateConfig) -> dict[str, Any]:
    examples = ctx.eval_examples[: config.max_examples] if config.max_examples else ctx.eval_examples
    if not examples:
        raise DataError("the validate step needs eval data: pass --eval-data FILE.jsonl (lines of "
                        "{\"text\": ..., \"label\": ...}; for embeddings {\"text\": ..., \"positive\": ...})")
    texts = ctx.eval_texts(examples)
    reference = ctx.reference_logits(texts, config.batch_size)
    engine, executed = _engine_or_stand_in(ctx)
    logits = engine_logits(engine, ctx.tokenizer, texts, ctx.config.max_sequence_length, config.batch_size)
    result = ctx.compare(reference, logits, examples, texts)
    ctx.validation = result.to_dict() | {"budget": config.budget.to_dict(), "engine_executed": executed}
    config.budget.check(result)
    return {"runtime": ctx.runtime, "engine_executed": executed} | {
        k: v for k, v in result.to_dict().items() if k != "worst_text"}


def _engine_or_stand_in(ctx: BuildContext) -> tuple[Any, bool | str]:
    """The engine as served; for a TensorRT engine on a machine without a GPU, the exact ONNX handed to TensorRT
    run in ONNX Runtime instead, marked so that nobody mistakes it for a GPU result."""
    try:
        return ctx.open_engine(), True
    except NoGpuError:
        if ctx.compiled_onnx_path is None:
            raise
        progress.info(f"  validate: engine not executed: no GPU; validating {ctx.compiled_onnx_path.name} (the "
                      "ONNX handed to TensorRT) in ONNX Runtime instead")
        engine = load_engine(ctx.compiled_onnx_path, REFERENCE_RUNTIME, ctx.config.intra_op_threads)
        return engine, f"engine not executed: no GPU; validated {ctx.compiled_onnx_path.name} in onnxruntime"
