"""Step registry and runner.

Steps are plain functions `fn(ctx, config) -> dict` registered per config type (like torchao's
`quantize_` handlers). The runner checks the declared order before doing any work, runs each
step under a progress stage, and records what each step did in the build report.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.errors import ConfigError, StepOrderError

from .config import BuildConfig, StepConfig

StepFunction = Callable[["BuildContext", Any], dict[str, Any]]
_REGISTRY: dict[type[StepConfig], StepFunction] = {}


def register_step(config_type: type[StepConfig]) -> Callable[[StepFunction], StepFunction]:
    def decorator(fn: StepFunction) -> StepFunction:
        _REGISTRY[config_type] = fn
        return fn

    return decorator


def step_function(config: StepConfig) -> StepFunction:
    try:
        return _REGISTRY[type(config)]
    except KeyError:
        raise ConfigError(f"no step function registered for {type(config).__name__}") from None


def check_step_order(steps: tuple[StepConfig, ...]) -> None:
    """Refuse orders that make no sense: each stage at most once, stages strictly increasing, and no
    ONNX step together with a step whose model cannot be exported (`onnx_incompatible`)."""
    blockers = [s.step_type for s in steps if s.onnx_incompatible]
    onnx_steps = [s.step_type for s in steps if s.operates_on_onnx()]
    if blockers and onnx_steps:
        raise StepOrderError(
            f"step '{blockers[0]}' makes a model that cannot be exported to ONNX, so it cannot be combined "
            f"with {', '.join(repr(s) for s in onnx_steps)}: drop those steps (the '{blockers[0]}' engine is "
            f"served by its own runtime) or drop '{blockers[0]}' and quantize the ONNX graph instead"
        )
    seen: dict[int, str] = {}
    previous: StepConfig | None = None
    for step in steps:
        if step.stage in seen:
            raise StepOrderError(
                f"step '{step.step_type}' repeats stage of '{seen[step.stage]}': "
                "a build applies each kind of transform once"
            )
        if previous is not None and step.stage < previous.stage:
            raise StepOrderError(
                f"step '{step.step_type}' cannot run after '{previous.step_type}': "
                f"move it earlier (order: {' < '.join(_stage_names())})"
            )
        seen[step.stage] = step.step_type
        previous = step


def _stage_names() -> list[str]:
    from .config import STEP_CONFIG_TYPES

    return [c.step_type for c in sorted(STEP_CONFIG_TYPES.values(), key=lambda c: c.stage)]


@dataclass
class StepRecord:
    name: str
    seconds: float
    details: dict[str, Any]


@dataclass
class BuildContext:
    """Mutable state handed from step to step."""

    config: BuildConfig
    work_dir: Path
    reference_model: Any = None  # fp32 torch model, never modified
    model: Any = None  # torch model the torch-level steps transform
    tokenizer: Any = None
    labels: list[str] = field(default_factory=list)
    checkpoint_info: dict[str, Any] = field(default_factory=dict)
    onnx_path: Path | None = None  # the current engine file; each ONNX step replaces it
    model_dir: Path | None = None  # torch-bnb: the saved (save_pretrained) 4-bit model the bundle ships
    precision: str = "fp32"
    # Runtime that serves the engine: "onnxruntime" / "openvino" run ctx.onnx_path, "torch-bnb" runs ctx.model.
    runtime: str = "onnxruntime"
    eval_examples: list[Any] = field(default_factory=list)
    train_examples: list[Any] = field(default_factory=list)
    calibration_examples: list[Any] = field(default_factory=list)
    unlabelled_examples: list[Any] = field(default_factory=list)  # text only: labels are dropped on load
    records: list[StepRecord] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    bundle_dir: Path | None = None
    published: dict[str, Any] | None = None
    _reference_logits: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)

    def reference_logits(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        """fp32 reference model logits, computed once per text list: static_int8's fallback, select_runtime
        and validate all judge against the same eval texts, and the reference model never changes."""
        key = (tuple(texts), batch_size)
        if key not in self._reference_logits:
            from .inference import torch_logits

            self._reference_logits[key] = torch_logits(self.reference_model, self.tokenizer, texts,
                                                       self.config.max_sequence_length, batch_size)
        return self._reference_logits[key]


def run_steps(ctx: BuildContext) -> None:
    steps = ctx.config.steps
    for index, step in enumerate(steps, start=1):
        fn = step_function(step)
        label = f"step {index}/{len(steps)} {step.step_type}"
        start = time.perf_counter()
        with progress.stage(label):
            details = fn(ctx, step) or {}
        ctx.records.append(StepRecord(step.step_type, time.perf_counter() - start, details))
        summary = ", ".join(f"{k}={v}" for k, v in details.items() if not isinstance(v, dict | list))
        if summary:
            progress.info(f"  {step.step_type}: {summary}")


def prepare_output_dir(config: BuildConfig) -> Path:
    """Create the output dir; refuse to overwrite the input or an earlier build unless asked."""
    out = config.output_dir.resolve()
    ckpt = config.checkpoint.resolve()
    if out == ckpt or ckpt.is_relative_to(out) or out.is_relative_to(ckpt):
        raise ConfigError(
            f"output directory {config.output_dir} would overwrite the input checkpoint {config.checkpoint}: "
            "choose a directory outside the checkpoint (e.g. artifacts/builds/NAME)"
        )
    if out.exists() and any(out.iterdir()):
        if not config.overwrite:
            raise ConfigError(
                f"output directory {config.output_dir} is not empty: pass --overwrite to replace it "
                "or choose another --output"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out
