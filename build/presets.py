"""Named presets and recipe files (TOML) that fully describe a build."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from engineforge.errors import ConfigError

from .config import DATA_FIELDS, StepConfig
from .step_registry import step_config_from_dict
from .steps import (
    Bnb4BitConfig,
    CompileConfig,
    DistillConfig,
    DynamicInt8Config,
    ExportConfig,
    GraphOptimizeConfig,
    Int4WeightOnlyConfig,
    PlanServingConfig,
    PruneConfig,
    PublishConfig,
    SelectRuntimeConfig,
    StaticInt8Config,
    ValidateConfig,
)


def _serve(*steps: StepConfig, validate: ValidateConfig | None = None) -> tuple[StepConfig, ...]:
    return (*steps, validate or ValidateConfig(), PublishConfig())


def _serve_cpu(*steps: StepConfig, validate: ValidateConfig | None = None) -> tuple[StepConfig, ...]:
    """An ONNX engine served on the CPU: length buckets, threads and instances measured on the traffic profile."""
    return _serve(*steps, PlanServingConfig(), validate=validate)


# Every preset, in the order help and refusals list them: the one list of preset names (PRESET_NAMES).
_PRESETS: dict[str, Callable[[], tuple[StepConfig, ...]]] = {
    # Reference: exported and fused, full precision, ONNX Runtime.
    "fp32": lambda: _serve_cpu(ExportConfig(), GraphOptimizeConfig()),
    # Full precision in whichever CPU runtime is faster here; a tight budget.
    "max-accuracy": lambda: _serve_cpu(ExportConfig(), GraphOptimizeConfig(), SelectRuntimeConfig(),
                                       validate=ValidateConfig(max_accuracy_drop=0.0, min_agreement=0.995)),
    # ONNX Runtime dynamic int8, per-channel weights (what Optimum's dynamic quantizer gives).
    "int8": lambda: _serve_cpu(ExportConfig(), GraphOptimizeConfig(), DynamicInt8Config()),
    # Calibrated static Q/DQ int8 with sensitivity fallback; runs in ORT or OpenVINO, fastest wins.
    "int8-static": lambda: _serve_cpu(ExportConfig(), StaticInt8Config(), SelectRuntimeConfig()),
    # Memory, not speed: block-wise int4 weights (slower than int8 on x86 CPUs, measured).
    "int4-weight-only": lambda: _serve_cpu(ExportConfig(), GraphOptimizeConfig(), Int4WeightOnlyConfig()),
    # bitsandbytes NF4 served by a torch python backend (no ONNX path exists for bnb layers).
    "nf4": lambda: _serve(Bnb4BitConfig()),
    # Default CPU preset: prune heads + FFN, recover by distillation, calibrated int8, fastest runtime.
    # Its first candidate; `preset_candidates` lists the milder ones tried when the budget is missed.
    "fast-cpu": lambda: _fast_cpu(0.5, 0.5),
    # NVIDIA GPUs: TensorRT from a strongly typed fp16 graph (LayerNorm/Softmax kept fp32).
    "trt-fp16": lambda: _serve(ExportConfig(), CompileConfig(precision="fp16")),
    # NVIDIA GPUs: fast-cpu's pruning, distillation and symmetric Q/DQ int8, compiled by TensorRT.
    "trt-int8": lambda: _fast_cpu(0.5, 0.5, gpu=True),
    # NVIDIA GPUs: trt-int8's last rung (no pruning): calibrated symmetric Q/DQ int8 compiled by TensorRT.
    "trt-int8-static": lambda: _fast_cpu(0, 0, gpu=True),
}


def _fast_cpu(head_sparsity: float, ffn_sparsity: float, gpu: bool = False) -> tuple[StepConfig, ...]:
    """The pruned int8 ladder's rung; `gpu` compiles it with TensorRT instead of picking a CPU runtime."""
    # On CPUs the pruned student's int8 graph is measured both ways, static Q/DQ and ONNX Runtime's dynamic int8:
    # which is faster depends on the CPU (select_runtime.py).
    last: StepConfig = CompileConfig(precision="int8") if gpu else SelectRuntimeConfig(dynamic_int8=True)
    serve = _serve if gpu else _serve_cpu
    if head_sparsity == ffn_sparsity == 0:
        return serve(ExportConfig(), StaticInt8Config(), last)
    # Hidden-state matching on top of the logits: per-token targets, measured +0.3 points of agreement
    # on the demo student (50 %/50 %, 2200 texts). All 8 epochs run (patience 0; the best held-out epoch is
    # still restored): the learning rate decays to zero, and stopping on the noisy KL of ~220 held-out
    # texts kept, in two demo runs, an epoch 0.3-0.6 points less accurate than the last one.
    distill = DistillConfig(epochs=8, hidden_weight=1.0, patience=0)
    return serve(PruneConfig(head_sparsity=head_sparsity, ffn_sparsity=ffn_sparsity), distill,
                 ExportConfig(), StaticInt8Config(), last)


# (head, FFN) sparsity, most aggressive first. The second rung is as fast as the first (measured in OpenVINO:
# 6 heads + 768 neurons 9.04 ms, 8 heads + 614 neurons 8.96 ms fp32 at 1x128) but keeps more heads, which
# recovered better on one of two distillation seeds tried on the demo; then milder pruning, then none.
_FAST_CPU_LADDER = ((0.5, 0.5), (1 / 3, 0.6), (0.25, 0.25), (0.0, 0.0))


def preset_candidates(name: str) -> list[tuple[str, tuple[StepConfig, ...]]]:
    """(description, steps) to try in order until one meets the accuracy budget."""
    if name in LADDER_PRESETS:
        gpu = name == "trt-int8"
        return [(f"prune {int(h * 100)}% heads / {int(f * 100)}% FFN + distill + static int8", _fast_cpu(h, f, gpu))
                if h else ("no pruning, static int8", _fast_cpu(0, 0, gpu))
                for h, f in _FAST_CPU_LADDER]
    return [(name, preset_steps(name))]


PRESET_NAMES = tuple(_PRESETS)
DEFAULT_PRESET = "int8"
# The presets whose candidates are the pruned int8 ladder's rungs (`preset_candidates`).
LADDER_PRESETS = ("fast-cpu", "trt-int8")


def preset_steps(name: str) -> tuple[StepConfig, ...]:
    if name not in PRESET_NAMES:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return _PRESETS[name]()


def load_recipe(path: Path) -> dict[str, Any]:
    """Read a recipe: `preset = "int8"` and/or `[[steps]]` tables with a `type`, plus build settings.

    Returns BuildConfig keyword arguments (checkpoint/output may be absent; the CLI supplies them).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {path} is not valid TOML: {exc}") from exc
    allowed = {"preset", "steps", "checkpoint", "output_dir", *DATA_FIELDS, "max_sequence_length", "intra_op_threads",
               "max_build_minutes"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"recipe {path}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    if "steps" in raw and "preset" in raw:
        raise ConfigError(f"recipe {path}: give either `preset` or `[[steps]]`, not both")
    kwargs: dict[str, Any] = {k: v for k, v in raw.items() if k not in ("preset", "steps")}
    if "steps" in raw:
        kwargs["steps"] = tuple(step_config_from_dict(s) for s in raw["steps"])
        kwargs["preset"] = None
    else:
        kwargs["preset"] = raw.get("preset", DEFAULT_PRESET)
        kwargs["steps"] = preset_steps(kwargs["preset"])
    base = path.parent
    for key in ("checkpoint", "output_dir", *DATA_FIELDS):
        if key in kwargs:  # recipe paths are relative to the recipe file
            kwargs[key] = (base / kwargs[key]).resolve()
    return kwargs


def dump_recipe(steps: tuple[StepConfig, ...], settings: dict[str, Any]) -> str:
    """Serialise a build back to TOML (round-trips through load_recipe). TOML has no null: None is left out
    and reads back as the default, which is None wherever None is allowed."""
    document: dict[str, Any] = {key: _toml_value(value) for key, value in settings.items() if value is not None}
    document["steps"] = [{k: _toml_value(v) for k, v in step.to_dict().items() if v is not None} for step in steps]
    return tomli_w.dumps(document)


def _toml_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value
