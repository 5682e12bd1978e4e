"""Before a build loads anything, `check_build` refuses what cannot work (once per candidate): what the
checkpoint's family or task cannot do, the recipe's order, artefacts and settings (`recipe_checks.py`), a step
no function is registered for, and what the machine lacks (TensorRT for `compile`). Then `run_steps` runs the
registered functions in order, each timed and its failure named."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.errors import ConfigError, EngineforgeError, StepFailedError

from .config import BuildConfig, StepConfig
from .context import BuildContext
from .families import model_blockers, read_family, read_task
from .recipe_checks import recipe_blockers, refusal
from .refusal import model_refusal
from .report import StepRecord
from .step_output import as_output, check_contract
from .step_registry import StepNotRegisteredError, missing_functions, step_function

BUILD_LOG = "build.log"  # third-party warnings and log records of a build, beside its report


def check_build(config: BuildConfig) -> None:
    """Everything that can be refused without loading the checkpoint (its config.json is read), in one error:
    what the checkpoint's family or task cannot do (with the fix, checked to pass: `refusal.py`), else every
    order, prerequisite and setting blocker; then a step without a registered function, then what the machine
    lacks for a step. Run once per candidate, by whoever starts the build (`runner.run_build` or the search)."""
    family = read_family(config.checkpoint)
    task = read_task(config.checkpoint, config.task) if family is not None else None
    if blocked := model_blockers(config.steps, family, task):
        raise model_refusal(config, family, task, blocked)
    if found := recipe_blockers(config):
        raise refusal(found, f"preset '{config.preset}'" if config.preset else "this recipe")
    if missing := missing_functions(config.steps):
        raise _not_registered(config.steps, missing)
    for step in config.steps:  # what this machine lacks (TensorRT for compile), before any step spends time
        step.check_environment()


def _not_registered(steps: tuple[StepConfig, ...], missing: list[str]) -> StepNotRegisteredError:
    """The refusal of steps without a function, naming the module that registers each where the config says."""
    where = {s.step_type: s.registered_by for s in steps if s.registered_by}
    fixes = [f"'{m}' is registered by {where[m]} (build through engineforge.commands.build_engine, which imports "
             "it)" if m in where else f"import the module that registers '{m}'" for m in missing]
    return StepNotRegisteredError(
        f"no function is registered for step(s) {', '.join(repr(m) for m in missing)}: {'; '.join(fixes)}")


def run_step(ctx: BuildContext, step: StepConfig) -> dict[str, Any]:
    """Run one registered step on `ctx`: its output, checked against the artefacts it declares, becomes the
    build's state; returns the details for the report."""
    output = as_output(step_function(step)(ctx, step))
    check_contract(step, output)
    for name, value in output.made().items():
        setattr(ctx, name, value)
    return output.details


def run_steps(ctx: BuildContext) -> None:
    steps = ctx.config.steps
    for index, step in enumerate(steps, start=1):
        label = f"step {index}/{len(steps)} {step.step_type}"
        start = time.perf_counter()
        with progress.stage(label):
            try:
                details = run_step(ctx, step)
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
