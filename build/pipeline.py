"""Step registry and the checks that refuse a nonsensical build before any work starts.

Steps are plain functions `fn(ctx, config) -> dict` registered per config type (like torchao's
`quantize_` handlers); registering also lets recipes name the config by its `step_type`. Before a build
loads anything, `check_build` checks the declared order (stages), follows each step's artefacts through the
recipe and asks each step what the checkpoint's family and task allow; every blocker found is refused in one
error that names each once and ends with the fix.
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
)

from .config import ORDER, PREREQUISITE, SETTING, Artifact, Blocker, BuildConfig, StepConfig
from .context import BuildContext
from .families import model_blockers, read_family, read_task
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


def order_blockers(steps: Sequence[StepConfig]) -> list[Blocker]:
    """Each stage at most once, stages strictly increasing: every step out of place."""
    found: list[Blocker] = []
    seen: dict[int, str] = {}
    previous: StepConfig | None = None
    for step in steps:
        if step.stage in seen:
            found.append(Blocker(step.step_type, f"repeats stage of '{seen[step.stage]}'", ORDER,
                                 f"a build applies each kind of transform once: drop '{step.step_type}' or "
                                 f"'{seen[step.stage]}'"))
        elif previous is not None and step.stage < previous.stage:
            found.append(Blocker(step.step_type, f"cannot run after '{previous.step_type}'", ORDER,
                                 f"move '{step.step_type}' earlier (order: {' < '.join(stage_order())})"))
        seen.setdefault(step.stage, step.step_type)
        previous = step
    return found


def prerequisite_blockers(steps: Sequence[StepConfig], inputs: Iterable[Artifact]) -> list[Blocker]:
    """Follow the artefacts through the steps: every step input nothing provides. Past a missing step's
    artefact, it counts as there (with what the step its fix adds makes): a later step is not refused for that."""
    available = set(inputs)
    removed_by: dict[Artifact, StepConfig] = {}
    found: list[Blocker] = []
    for step in steps:
        for artifact in sorted((a for a in step.prerequisites() if a not in available), key=lambda a: a.name):
            found.append(_explain(step, artifact, removed_by.get(artifact)))
            if not artifact.supplied_by:  # data is not: each step needing it is named (on one line)
                makers = _makers(artifact, step)
                available |= {artifact, *(makers[0].provides if makers else ())}
        for artifact in step.removes:
            available.discard(artifact)
            removed_by[artifact] = step
        available |= step.provides
    return found


def _explain(step: StepConfig, artifact: Artifact, remover: StepConfig | None) -> Blocker:
    needs = f"needs {artifact.description}"
    if remover is not None:
        return Blocker(step.step_type, f"{needs}, but '{remover.step_type}' before it {remover.removes_reason}",
                       PREREQUISITE, f"drop '{step.step_type}', or drop '{remover.step_type}'")
    if artifact.supplied_by:
        return Blocker(step.step_type, needs, PREREQUISITE, artifact.supplied_by)
    fix = " or ".join(f"'{m.step_type}'" for m in _makers(artifact, step)) or "a step that makes it"
    return Blocker(step.step_type, f"{needs}, which no earlier step makes", PREREQUISITE,
                   f"add {fix} before '{step.step_type}'")


def _makers(artifact: Artifact, step: StepConfig) -> list[type[StepConfig]]:
    """Step types that make `artifact` and may run before `step`, in stage order."""
    return [c for c in sorted(STEP_CONFIG_TYPES.values(), key=lambda c: c.stage)
            if artifact in c.provides and c.stage < step.stage]


def setting_blockers(config: BuildConfig) -> list[Blocker]:
    """Settings that contradict the rest of the build (each step's `check_in`)."""
    found = []
    for step in config.steps:
        try:
            step.check_in(config)
        except ConfigError as exc:
            found.append(Blocker(step.step_type, str(exc), SETTING))
    return found


def recipe_blockers(config: BuildConfig) -> list[Blocker]:
    """Everything but the model's limits. Artefacts are only followed along a valid order: out of order, a step
    "missing" its input only needs moving, which the order blocker already says."""
    return order_blockers(config.steps) or [*prerequisite_blockers(config.steps, config.inputs()),
                                            *setting_blockers(config)]


def refusal(blockers: Sequence[Blocker], what: str = "this recipe") -> ConfigError:
    """One typed error for every blocker: a single one reads as before ("step 'X' needs Y: fix"); several are
    listed each once, then one line with every fix."""
    kinds = {b.kind for b in blockers}
    error = StepOrderError if ORDER in kinds else MissingPrerequisiteError if PREREQUISITE in kinds else ConfigError
    if len(blockers) == 1:
        (only,) = blockers
        return error(only.reason if only.kind == SETTING else f"step '{only.step}' {only.reason}: {only.fix}")
    fixes = list(dict.fromkeys(b.fix for b in blockers if b.fix))
    return error(f"{what} cannot run:\n" + "\n".join(f"- {line}" for line in blocker_lines(blockers))
                 + (f"\nFix: {'; and '.join(fixes)}" if fixes else ""))


def blocker_lines(blockers: Sequence[Blocker]) -> list[str]:
    """One line per blocker; steps missing the same data share one ("steps 'a' and 'b' need ...")."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for b in blockers:
        groups.setdefault((b.kind, b.reason, b.fix), []).append(b.step)
    lines = []
    for (kind, reason, _), steps in groups.items():
        names = list(dict.fromkeys(steps))
        if kind == SETTING:
            lines += [f"step '{name}': {reason}" for name in names]
        elif len(names) > 1 and reason.startswith("needs "):
            lines.append(f"steps {', '.join(repr(n) for n in names[:-1])} and '{names[-1]}' need {reason[6:]}")
        else:
            lines += [f"step '{name}' {reason}" for name in names]
    return lines


def check_step_order(steps: Sequence[StepConfig]) -> None:
    if found := order_blockers(steps):
        raise refusal(found)


def check_prerequisites(steps: Sequence[StepConfig], inputs: Iterable[Artifact]) -> None:
    if found := prerequisite_blockers(steps, inputs):
        raise refusal(found)


def check_build(config: BuildConfig) -> None:
    """Everything that can be refused without loading the checkpoint (its config.json is read), in one error:
    what the checkpoint's family or task cannot do (with the fix, checked to pass: `refusal.py`), else every
    order, prerequisite and setting blocker."""
    family = read_family(config.checkpoint)
    task = read_task(config.checkpoint, config.task) if family is not None else None
    if blocked := model_blockers(config.steps, family, task):
        from .refusal import model_refusal

        raise model_refusal(config, family, task, blocked)
    if found := recipe_blockers(config):
        raise refusal(found, f"preset '{config.preset}'" if config.preset else "this recipe")


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
