"""The checks that refuse a nonsensical recipe before any work: the declared order (stages), each step's artefacts
followed through the recipe, and each step's settings against the rest of the build. Every blocker found is
refused in one typed error that names each once and ends with the fix."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from engineforge.errors import ConfigError, MissingPrerequisiteError, StepOrderError

from .config import ORDER, PREREQUISITE, SETTING, Artifact, Blocker, BuildConfig, StepConfig
from .step_registry import config_types_in_stage_order, stage_order


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
    return [c for c in config_types_in_stage_order()
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
