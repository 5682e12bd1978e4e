"""Step configs: frozen dataclasses validated on creation, each naming the fix when a value is wrong.

Every config class carries a `step_type` (the name used in recipe files) and a `stage`: the
position of its step in the pipeline. Stages encode the order that makes sense (prune before
quantize, quantize the torch model before exporting, optimize the ONNX graph before quantizing
it, validate after everything that changes numerics, publish last).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from engineforge.errors import ConfigError

# Stage numbers leave gaps so later steps (pruning, distillation, static int8, compile) slot in.
STAGE_PRUNE = 10
STAGE_DISTILL = 20
STAGE_TORCH_QUANTIZE = 30
STAGE_EXPORT = 40
STAGE_GRAPH_OPTIMIZE = 50
STAGE_ONNX_QUANTIZE = 60
STAGE_COMPILE = 70
STAGE_VALIDATE = 80
STAGE_PUBLISH = 90


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class StepConfig:
    """Base class: subclasses set `step_type` and `stage`."""

    step_type: ClassVar[str] = ""
    stage: ClassVar[int] = 0
    # True when the step's model can no longer be exported to ONNX (e.g. bitsandbytes 4-bit layers):
    # check_step_order then refuses any ONNX step in the same build before work starts.
    onnx_incompatible: ClassVar[bool] = False

    @classmethod
    def operates_on_onnx(cls) -> bool:
        """Steps staged from export up to compile read or write the ONNX graph; validate/publish do not."""
        return STAGE_EXPORT <= cls.stage < STAGE_VALIDATE

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.step_type, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StepConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        _require(
            not unknown,
            f"step '{cls.step_type}' has no option(s) {unknown}; valid options: {sorted(known)}",
        )
        return cls(**values)


@dataclass(frozen=True)
class ExportConfig(StepConfig):
    """Export the PyTorch model to ONNX with dynamic batch and sequence axes."""

    step_type: ClassVar[str] = "export"
    stage: ClassVar[int] = STAGE_EXPORT

    opset: int = 17
    # Tolerance for the export check: max |logit_onnx - logit_torch| on sample inputs.
    atol: float = 1e-3

    def __post_init__(self) -> None:
        _require(14 <= self.opset <= 21, f"export.opset={self.opset} is unsupported; use 14..21 (17 tested)")
        _require(self.atol > 0, f"export.atol must be > 0, got {self.atol}")


@dataclass(frozen=True)
class GraphOptimizeConfig(StepConfig):
    """ONNX Runtime transformer graph optimizations (attention / LayerNorm / GELU fusion)."""

    step_type: ClassVar[str] = "graph_optimize"
    stage: ClassVar[int] = STAGE_GRAPH_OPTIMIZE

    # ORT's offline optimization level applied after the fusions: 0 = fusions only, 1 = basic, 2 = extended.
    # 99 (all) would bake CPU-specific layouts into the file, so it is not offered.
    opt_level: int = 1

    def __post_init__(self) -> None:
        _require(self.opt_level in (0, 1, 2), f"graph_optimize.opt_level={self.opt_level}: use 0, 1 or 2")


@dataclass(frozen=True)
class DynamicInt8Config(StepConfig):
    """ONNX Runtime dynamic int8: int8 weights, activations quantized on the fly per batch."""

    step_type: ClassVar[str] = "dynamic_int8"
    stage: ClassVar[int] = STAGE_ONNX_QUANTIZE

    per_channel: bool = True
    # QInt8 weights are ~2x faster than QUInt8 on x86 VNNI (measured, FIELD-NOTES).
    weight_type: str = "int8"
    reduce_range: bool = False
    # Op types to quantize; MatMul carries ~all of BERT's compute, Gather would shrink embeddings only.
    op_types: tuple[str, ...] = ("MatMul", "Attention")

    def __post_init__(self) -> None:
        _require(
            self.weight_type in ("int8", "uint8"),
            f"dynamic_int8.weight_type='{self.weight_type}': use 'int8' (fast on x86) or 'uint8'",
        )
        _require(len(self.op_types) > 0, "dynamic_int8.op_types is empty: name at least 'MatMul'")
        object.__setattr__(self, "op_types", tuple(self.op_types))


@dataclass(frozen=True)
class ValidateConfig(StepConfig):
    """Compare the engine with the fp32 PyTorch original on labelled eval data; enforce the budget."""

    step_type: ClassVar[str] = "validate"
    stage: ClassVar[int] = STAGE_VALIDATE

    # Budget: accuracy may drop at most this many percentage points below fp32 ...
    max_accuracy_drop: float = 1.0
    # ... and the engine's argmax must agree with fp32's on at least this fraction of examples.
    min_agreement: float = 0.98
    batch_size: int = 32
    # None = every example of the eval file.
    max_examples: int | None = None

    def __post_init__(self) -> None:
        _require(
            0 <= self.max_accuracy_drop <= 100,
            f"validate.max_accuracy_drop={self.max_accuracy_drop}: give percentage points in [0, 100], e.g. 1.0",
        )
        _require(
            0 <= self.min_agreement <= 1,
            f"validate.min_agreement={self.min_agreement}: give a fraction in [0, 1], e.g. 0.98",
        )
        _require(self.batch_size >= 1, f"validate.batch_size must be >= 1, got {self.batch_size}")
        _require(
            self.max_examples is None or self.max_examples >= 1,
            f"validate.max_examples must be >= 1 or omitted, got {self.max_examples}",
        )


@dataclass(frozen=True)
class PublishConfig(StepConfig):
    """Publish the engine as a new version in a Triton model repository."""

    step_type: ClassVar[str] = "publish"
    stage: ClassVar[int] = STAGE_PUBLISH

    repo_dir: str = "model_repo"
    # None = derived from the checkpoint directory name.
    model_name: str | None = None
    max_batch_size: int = 32
    max_queue_delay_us: int = 2000
    instances: int = 1

    def __post_init__(self) -> None:
        if self.model_name is not None:
            _require(
                self.model_name.replace("_", "").replace("-", "").isalnum(),
                f"publish.model_name='{self.model_name}': use letters, digits, '-' and '_' only",
            )
        _require(self.max_batch_size >= 1, f"publish.max_batch_size must be >= 1, got {self.max_batch_size}")
        _require(self.max_queue_delay_us >= 0, "publish.max_queue_delay_us must be >= 0")
        _require(self.instances >= 1, f"publish.instances must be >= 1, got {self.instances}")


STEP_CONFIG_TYPES: dict[str, type[StepConfig]] = {
    cls.step_type: cls
    for cls in (ExportConfig, GraphOptimizeConfig, DynamicInt8Config, ValidateConfig, PublishConfig)
}


def register_config_type(cls: type[StepConfig]) -> type[StepConfig]:
    """Let a new step config be named in recipe files."""
    STEP_CONFIG_TYPES[cls.step_type] = cls
    return cls


def step_config_from_dict(values: dict[str, Any]) -> StepConfig:
    values = dict(values)
    step_type = values.pop("type", None)
    _require(
        step_type in STEP_CONFIG_TYPES,
        f"unknown step type {step_type!r}; known: {sorted(STEP_CONFIG_TYPES)}",
    )
    return STEP_CONFIG_TYPES[step_type].from_dict(values)


DATA_FIELDS = ("eval_data", "train_data", "calibration_data", "unlabelled_data")


@dataclass(frozen=True)
class BuildConfig:
    """A whole build: input, data, ordered steps and where results go."""

    checkpoint: Path
    output_dir: Path
    steps: tuple[StepConfig, ...]
    eval_data: Path | None = None
    # Labelled (or unlabelled) training text: pruning importance and distillation read it.
    train_data: Path | None = None
    # Representative inputs for static quantization ranges; never invented when absent.
    calibration_data: Path | None = None
    # Unlabelled in-domain text (e.g. production logs): the distill step labels it with the fp32 teacher.
    unlabelled_data: Path | None = None
    max_sequence_length: int = 128
    # Threads ONNX Runtime may use when the engine is served (and when validated here).
    intra_op_threads: int = 2
    overwrite: bool = False
    preset: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        for name in DATA_FIELDS:
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "steps", tuple(self.steps))
        _require(len(self.steps) > 0, "a build needs at least one step (e.g. preset 'int8')")
        _require(
            8 <= self.max_sequence_length <= 8192,
            f"max_sequence_length={self.max_sequence_length}: use 8..8192 (and <= the model's positions)",
        )
        _require(self.intra_op_threads >= 1, "intra_op_threads must be >= 1")

    def step(self, config_type: type[StepConfig]) -> StepConfig | None:
        return next((s for s in self.steps if isinstance(s, config_type)), None)
