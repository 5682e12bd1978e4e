"""The one public build entry: a checkpoint and what to build (a preset, a recipe file or a step list), data,
budget and publish settings in; the chosen build's report out. Like torchao's `quantize_`, one call checks and
runs: every candidate is refused or accepted once, before any work (the recipe, the checkpoint's family and task,
each step's registration and what the machine lacks, TensorRT for `compile`), then the candidates are tried in
order until one meets the budget (`engineforge.build.search`).

It sits on top because it joins two layers: build (the steps) and serve (the publish step's function, registered
by importing `engineforge.serve.publish_step`). `build-engine`, the demos and the benchmarks all call it.

    report = build_engine("ckpt", preset="int8", data={"eval_data": "eval.jsonl"},
                          publish={"repo_dir": "model_repo", "model_name": "intent"})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import engineforge.serve.publish_step  # noqa: F401  (registers the publish step's function)
from engineforge.build.candidates import Candidate, build_candidates, check_candidates
from engineforge.build.config import StepConfig
from engineforge.build.report import BuildReport
from engineforge.build.search import run_candidates


@dataclass(frozen=True)
class PreparedBuild:
    """Checked candidates, ready to run: `build-engine` checks (a refusal is a usage error) apart from running."""

    candidates: list[Candidate]

    @property
    def output_dir(self) -> Path:
        return self.candidates[0][1].output_dir

    def run(self) -> BuildReport:
        return run_candidates(self.candidates, recipe_checked=True)


def prepare_build(checkpoint: str | Path | None = None, *, preset: str | None = None,
                  recipe: str | Path | None = None, steps: Sequence[StepConfig] | None = None,
                  output_dir: str | Path | None = None, data: Mapping[str, str | Path | None] | None = None,
                  budget: Mapping[str, float | None] | None = None, publish: bool | Mapping[str, Any] = True,
                  overwrite: bool = False, **settings: Any) -> PreparedBuild:
    """The candidates `build_engine` would try, each checked once; raises a typed error for an impossible build."""
    candidates = build_candidates(
        Path(checkpoint) if checkpoint is not None else None, preset=preset,
        recipe=Path(recipe) if recipe is not None else None, steps=steps,
        output_dir=Path(output_dir) if output_dir is not None else None,
        data={k: Path(v) if v is not None else None for k, v in (data or {}).items()}, budget=budget,
        publish=publish, overwrite=overwrite, **settings)
    check_candidates(candidates)
    return PreparedBuild(candidates)


def build_engine(checkpoint: str | Path | None = None, *, preset: str | None = None,
                 recipe: str | Path | None = None, steps: Sequence[StepConfig] | None = None,
                 output_dir: str | Path | None = None, data: Mapping[str, str | Path | None] | None = None,
                 budget: Mapping[str, float | None] | None = None, publish: bool | Mapping[str, Any] = True,
                 overwrite: bool = False, **settings: Any) -> BuildReport:
    """Check, then build: one of `preset` (default: the default preset), `recipe` or `steps`. `data`: eval_data,
    train_data, calibration_data, unlabelled_data, traffic_data. `budget`: validate's max_accuracy_drop / min_agreement.
    `publish`: False builds without publishing, a mapping sets publish's options (repo_dir, model_name, ...).
    `settings`: max_sequence_length, intra_op_threads, task, max_build_minutes. Returns the chosen build's report."""
    return prepare_build(checkpoint, preset=preset, recipe=recipe, steps=steps, output_dir=output_dir, data=data,
                         budget=budget, publish=publish, overwrite=overwrite, **settings).run()
