"""The refusal of a recipe the checkpoint's family or task cannot build: every blocker once, one fix that works.

A step that cannot run on the model (ALBERT's shared layers, ModernBERT's fused QKV, a token classifier's
pruning) says so with a `config.Blocker` and the least change that removes it: an option set to 0 (prune
heads where only FFN neurons can go) or the step dropped (and with it a step that only recovered what it
changed: distill after prune). The fix is that change, applied and checked here before it is suggested; what
the changed recipe still lacks (a data file, an order) is named too and joins the fix, so following the one
fix passes `check_build`. A preset is fixed by naming the preset that builds the changed recipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from engineforge.engines.engine_spec import TEXT_CLASSIFICATION
from engineforge.errors import UnsupportedStepError

from .config import MODEL, Blocker, BuildConfig, StepConfig
from .families import EncoderFamily, model_blockers
from .presets import DEFAULT_PRESET, PRESET_NAMES, preset_steps
from .recipe_checks import blocker_lines, recipe_blockers


def model_refusal(config: BuildConfig, family: EncoderFamily, task: str | None,
                  blockers: Sequence[Blocker]) -> UnsupportedStepError:
    """One error naming every blocker of the recipe once and ending with one fix."""
    steps, edits = fixed_steps(config.steps, blockers)
    if config.preset or not steps:  # a preset, or a recipe that was nothing but blocked steps: name a preset
        fix, steps = _preset_fix(config, steps, blockers, family, task)
    else:
        fix = " and ".join(edits)
    rest = recipe_blockers(dataclasses.replace(config, steps=steps))
    fixes = [fix, *dict.fromkeys(b.fix for b in rest if b.fix)]
    working = [name for name in PRESET_NAMES if not model_blockers(preset_steps(name), family, task)]
    what = f"preset '{config.preset}'" if config.preset else "this recipe"
    kind = family.name if task in (None, TEXT_CLASSIFICATION) else f"{family.name} {task}"
    lines = list(dict.fromkeys(blocker_lines([*blockers, *rest])))
    return UnsupportedStepError(
        f"{what} cannot build this {family.name} checkpoint:\n" + "\n".join(f"- {line}" for line in lines)
        + f"\nPresets that work for {kind}: {', '.join(working)}\nFix: {'; and '.join(fixes)}")


def fixed_steps(steps: Sequence[StepConfig], blockers: Sequence[Blocker]) -> tuple[tuple[StepConfig, ...], list[str]]:
    """(the steps with every model blocker removed, the edits in words). A step some blocker drops goes; the
    others get their option changes; a step pointless without a dropped one goes with it."""
    by_step: dict[str, list[Blocker]] = {}
    for blocker in blockers:
        if blocker.kind == MODEL:
            by_step.setdefault(blocker.step, []).append(blocker)
    kept: list[StepConfig] = []
    dropped: list[str] = []
    changed: list[str] = []
    for step in steps:
        found = by_step.get(step.step_type, [])
        if any(b.changes is None for b in found):
            dropped.append(step.step_type)
            continue
        changes = {name: value for b in found for name, value in b.changes or ()}
        kept.append(dataclasses.replace(step, **changes) if changes else step)
        changed += [f"set {step.step_type}.{name} = {_value(value)}" for name, value in changes.items()]
    dropped += [s.step_type for s in kept if s.pointless_without in dropped]
    kept = [s for s in kept if s.step_type not in dropped]
    edits = ([f"drop the {_join(dropped)} step{'s' if len(dropped) > 1 else ''}"] if dropped else []) + changed
    return tuple(kept), edits


def _preset_fix(config: BuildConfig, steps: tuple[StepConfig, ...], blockers: Sequence[Blocker],
                family: EncoderFamily, task: str | None) -> tuple[str, tuple[StepConfig, ...]]:
    """("use preset 'X' ...", the steps that preset builds). The preset building the fixed recipe, else the one
    building it with every blocked step dropped (mpnet's FFN-only pruning has no preset), else the default."""
    dropping = [dataclasses.replace(b, changes=None) for b in blockers]
    for candidate in (steps, fixed_steps(config.steps, dropping)[0]):
        name = matching_preset(candidate)
        if name and candidate:
            removed = [s.step_type for s in config.steps if s.step_type not in {c.step_type for c in candidate}]
            same = f" ({config.preset} without its {_join(removed)} step" \
                   f"{'s' if len(removed) > 1 else ''})" if config.preset and removed else ""
            return f"use preset '{name}'{same}", candidate
    working = [n for n in PRESET_NAMES if not model_blockers(preset_steps(n), family, task)]
    name = DEFAULT_PRESET if DEFAULT_PRESET in working else working[0]
    return f"use preset '{name}'", preset_steps(name)


def matching_preset(steps: Sequence[StepConfig]) -> str | None:
    """The preset whose steps these are (validate's budget and publish, which the command line sets, aside)."""
    key = _key(steps)
    return next((name for name in PRESET_NAMES if _key(preset_steps(name)) == key), None)


def _key(steps: Sequence[StepConfig]) -> tuple[Any, ...]:
    # select_runtime.dynamic_int8 aside: fast-cpu's rungs also time the dynamic-int8 graph, and without pruning
    # they are int8-static's recipe plus that one candidate; int8-static is the preset to name.
    return tuple(str({k: v for k, v in s.to_dict().items() if k != "dynamic_int8"}) for s in steps
                 if s.step_type not in ("validate", "publish"))


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)
