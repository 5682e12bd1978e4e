"""Step registry and the checks that refuse a nonsensical build before any work starts.

Steps are plain functions `fn(ctx, config) -> dict` registered per config type (like torchao's
`quantize_` handlers); registering also lets recipes name the config by its `step_type`. Before a build
loads anything, `check_build` checks the declared order (stages) and follows each step's artefacts
through the recipe, so a step whose input nothing provides is refused with the fix in the message.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.errors import (
    ConfigError,
    EngineforgeError,
    MissingPrerequisiteError,
    StepFailedError,
    StepOrderError,
    UnsupportedStepError,
)

from .config import Artifact, BuildConfig, StepConfig
from .context import BuildContext
from .families import EncoderFamily, family_problems, read_family, read_task
from .report import StepRecord

StepFunction = Callable[[BuildContext, Any], dict[str, Any]]
_FUNCTIONS: dict[type[StepConfig], StepFunction] = {}
STEP_CONFIG_TYPES: dict[str, type[StepConfig]] = {}


BUILD_LOG = "build.log"  # third-party warnings and log records of a build, beside its report


def register_step(config_type: type[StepConfig]) -> Callable[[StepFunction], StepFunction]:
    def decorator(fn: StepFunction) -> StepFunction:
        _FUNCTIONS[config_type] = fn
        STEP_CONFIG_TYPES[config_type.step_type] = config_type
        return fn

    return decorator


def step_function(config: StepConfig) -> StepFunction:
    try:
        return _FUNCTIONS[type(config)]
    except KeyError:
        raise ConfigError(f"no step function registered for {type(config).__name__}") from None


def step_config_from_dict(values: dict[str, Any]) -> StepConfig:
    values = dict(values)
    step_type = values.pop("type", None)
    if step_type not in STEP_CONFIG_TYPES:
        raise ConfigError(f"unknown step type {step_type!r}; known: {sorted(STEP_CONFIG_TYPES)}")
    return STEP_CONFIG_TYPES[step_type].from_dict(values)


def stage_order() -> list[str]:
    return [c.step_type for c in sorted(STEP_CONFIG_TYPES.values(), key=lambda c: c.stage)]


def check_step_order(steps: Sequence[StepConfig]) -> None:
    """Each stage at most once, stages strictly increasing."""
    seen: dict[int, str] = {}
    previous: StepConfig | None = None
    for step in steps:
        if step.stage in seen:
            raise StepOrderError(f"step '{step.step_type}' repeats stage of '{seen[step.stage]}': "
                                 "a build applies each kind of transform once")
        if previous is not None and step.stage < previous.stage:
            raise StepOrderError(f"step '{step.step_type}' cannot run after '{previous.step_type}': "
                                 f"move it earlier (order: {' < '.join(stage_order())})")
        seen[step.stage] = step.step_type
        previous = step


def check_prerequisites(steps: Sequence[StepConfig], inputs: Iterable[Artifact]) -> None:
    """Follow the artefacts through the steps; refuse the first step whose input nothing provides."""
    available = set(inputs)
    removed_by: dict[Artifact, StepConfig] = {}
    for step in steps:
        missing = sorted((a for a in step.prerequisites() if a not in available), key=lambda a: a.name)
        if missing:
            raise MissingPrerequisiteError(_explain(step, missing[0], removed_by.get(missing[0])))
        for artifact in step.removes:
            available.discard(artifact)
            removed_by[artifact] = step
        available |= step.provides


def _explain(step: StepConfig, artifact: Artifact, remover: StepConfig | None) -> str:
    needs = f"step '{step.step_type}' needs {artifact.description}"
    if remover is not None:
        return (f"{needs}, but '{remover.step_type}' before it {remover.removes_reason}: drop '{step.step_type}', "
                f"or drop '{remover.step_type}'")
    if artifact.supplied_by:
        return f"{needs}: {artifact.supplied_by}"
    makers = [c.step_type for c in sorted(STEP_CONFIG_TYPES.values(), key=lambda c: c.stage)
              if artifact in c.provides and c.stage < step.stage]
    fix = " or ".join(f"'{m}'" for m in makers) or "a step that makes it"
    return f"{needs}, which no earlier step makes: add {fix} before it"


def check_build(config: BuildConfig) -> None:
    """Everything that can be refused without loading the checkpoint (its config.json is read)."""
    check_step_order(config.steps)
    check_prerequisites(config.steps, config.inputs())
    for step in config.steps:
        step.check_in(config)
    family = read_family(config.checkpoint)
    if family is not None:
        check_family(config.steps, family, config.preset, read_task(config.checkpoint, config.task))


def check_family(steps: Sequence[StepConfig], family: EncoderFamily, preset: str | None = None,
                 task: str | None = None) -> None:
    """Refuse steps that cannot work on the checkpoint's family (or task), naming the presets that do."""
    problems = family_problems(steps, family, task)
    if not problems:
        return
    from .presets import PRESET_NAMES, preset_steps

    working = [name for name in PRESET_NAMES if not family_problems(preset_steps(name), family, task)]
    what = f"preset '{preset}'" if preset else "this recipe"
    kind = family.name if task in (None, "text-classification") else f"{family.name} {task}"
    raise UnsupportedStepError(f"{what} cannot build this {family.name} checkpoint: " + "; ".join(problems)
                               + f". Presets that work for {kind}: {', '.join(working)}")


def run_steps(ctx: BuildContext) -> None:
    steps = ctx.config.steps
    for index, step in enumerate(steps, start=1):
        fn = step_function(step)
        label = f"step {index}/{len(steps)} {step.step_type}"
        start = time.perf_counter()
        with progress.stage(label):
            try:
                details = fn(ctx, step) or {}
            except EngineforgeError:
                raise
            except Exception as exc:  # a library failed inside the step: say which step, what, and what next
                raise StepFailedError(
                    f"{label} failed: {type(exc).__name__}: {str(exc).strip()[:600]}. The step's options are "
                    f"{step.to_dict()}; the full log is in {ctx.work_dir.parent / BUILD_LOG}. Try another "
                    "preset, or rerun with --debug for the traceback and report it if the checkpoint "
                    "and data are valid") from exc
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
