"""What to build, from what a caller asks for: a preset, a recipe file or a step list, plus data files, budget,
publish settings and build settings -> one (name, BuildConfig) per candidate, checked once before any work.

A recipe or most presets give one candidate; a laddered preset (`fast-cpu`, `trt-int8`) several. Values given
here override a recipe's (as command-line flags do); None leaves the recipe's or the default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engineforge.errors import ConfigError

from .checkpoint import read_checkpoint_config
from .config import DATA_FIELDS, BuildConfig, StepConfig
from .pipeline import check_build
from .presets import DEFAULT_PRESET, load_recipe, preset_candidates
from .steps import PublishConfig, ValidateConfig

Candidate = tuple[str, BuildConfig]
DEFAULT_BUILDS_DIR = Path("artifacts/builds")  # a build's output is DEFAULT_BUILDS_DIR / <checkpoint dir name>
# Build settings a caller may override (a recipe may set them too); `overwrite` is a caller's choice only.
SETTINGS = ("max_sequence_length", "intra_op_threads", "task", "max_build_minutes")


def build_candidates(checkpoint: Path | None = None, *, preset: str | None = None, recipe: Path | None = None,
                     steps: Sequence[StepConfig] | None = None, output_dir: Path | None = None,
                     data: Mapping[str, Path | None] | None = None, budget: Mapping[str, float | None] | None = None,
                     publish: bool | Mapping[str, Any] = True, overwrite: bool = False,
                     **settings: Any) -> list[Candidate]:
    """The candidates to try in order. `data`: eval_data, train_data, calibration_data, unlabelled_data, traffic_data.
    `budget`: validate's options (max_accuracy_drop, min_agreement). `publish`: False drops the publish step,
    a mapping replaces its options (repo_dir, model_name, long_texts...). `settings`: SETTINGS."""
    if sum(x is not None for x in (preset, recipe, steps)) > 1:
        raise ConfigError("give one of a preset, a recipe or a step list, not several")
    if unknown := sorted(set(settings) - set(SETTINGS)) + sorted(set(data or {}) - set(DATA_FIELDS)):
        raise ConfigError(f"unknown build setting(s) {unknown}; known: {[*SETTINGS, *DATA_FIELDS]}")
    if recipe is not None:
        ladder: list[tuple[str, dict[str, Any]]] = [(str(recipe), load_recipe(recipe))]
    elif steps is not None:
        ladder = [("steps", {"preset": None, "steps": tuple(steps)})]
    else:
        name = preset or DEFAULT_PRESET
        ladder = [(label, {"preset": name, "steps": rung}) for label, rung in preset_candidates(name)]
    given = {**(data or {}), **settings}
    return [(label, _config(kwargs, checkpoint, output_dir, given, budget or {}, publish, overwrite))
            for label, kwargs in ladder]


def _config(kwargs: dict[str, Any], checkpoint: Path | None, output_dir: Path | None, given: Mapping[str, Any],
            budget: Mapping[str, float | None], publish: bool | Mapping[str, Any], overwrite: bool) -> BuildConfig:
    kwargs = dict(kwargs)
    checkpoint = checkpoint or kwargs.get("checkpoint")
    if checkpoint is None:
        raise ConfigError("no checkpoint given: build-engine CHECKPOINT_DIR [--eval-data FILE]")
    kwargs["checkpoint"] = Path(checkpoint)
    kwargs["output_dir"] = output_dir or kwargs.get("output_dir") or DEFAULT_BUILDS_DIR / Path(checkpoint).name
    kwargs.update({key: value for key, value in given.items() if value is not None})
    kwargs["steps"] = tuple(_with_settings(kwargs["steps"], budget, publish))
    return BuildConfig(overwrite=overwrite, **kwargs)


def _with_settings(steps: Sequence[StepConfig], budget: Mapping[str, float | None],
                   publish: bool | Mapping[str, Any]) -> list[StepConfig]:
    """The steps with the caller's budget on validate and publish settings on publish (or publish dropped)."""
    changed: list[StepConfig] = []
    for step in steps:
        if isinstance(step, ValidateConfig):
            step = dataclasses.replace(step, **{k: v for k, v in budget.items() if v is not None})
        if isinstance(step, PublishConfig):
            if publish is False:
                continue
            if isinstance(publish, Mapping):
                step = dataclasses.replace(step, **{k: v for k, v in publish.items() if v is not None})
        changed.append(step)
    return changed


def check_candidates(candidates: Sequence[Candidate]) -> None:
    """Refuse an impossible build before any work: every candidate checked once (`pipeline.check_build`). The
    checkpoint first: nothing else is worth saying about a path that holds none."""
    read_checkpoint_config(candidates[0][1].checkpoint)
    for _, config in candidates:
        check_build(config)
