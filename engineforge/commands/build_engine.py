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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import engineforge.serve.publish_step  # noqa: F401  (registers the publish step's function)
from engineforge import progress
from engineforge.build.candidates import Candidate, build_candidates, check_candidates
from engineforge.build.config import StepConfig
from engineforge.build.lm.build_entry import PreparedLMBuild, is_lm_request, prepare_lm_build
from engineforge.build.lm.report import LMBuildReport
from engineforge.build.report import BuildReport
from engineforge.build.search import run_candidates
from engineforge.errors import ConfigError, UnsupportedStepError


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
                  overwrite: bool = False, **settings: Any) -> PreparedBuild | PreparedLMBuild:
    """The candidates `build_engine` would try, each checked once; raises a typed error for an impossible build.
    A causal LM (or `task="text-generation"`, or an `lm-*` preset) is an LM build (engineforge.build.lm.build_entry)."""
    if is_lm_request(checkpoint, preset, settings.get("task")):
        _refuse_lm_steps(recipe, steps)
        return prepare_lm_build(checkpoint, preset=preset, output_dir=output_dir,  # type: ignore[arg-type]
                                data=data, budget=budget, publish=publish, overwrite=overwrite,
                                publisher=_lm_publisher(Path(checkpoint), publish), **settings)  # type: ignore[arg-type]
    if budget and budget.get("max_ppl_increase") is not None:
        raise ConfigError("--max-ppl-increase is the budget of decoder-LM builds; an encoder build is judged by "
                          "--max-accuracy-drop and --min-agreement")
    budget = {k: v for k, v in (budget or {}).items() if k != "max_ppl_increase"}
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
                 overwrite: bool = False, **settings: Any) -> BuildReport | LMBuildReport:
    """Check, then build: one of `preset` (default: the default preset), `recipe` or `steps`. `data`: eval_data,
    train_data, calibration_data, unlabelled_data, traffic_data. `budget`: validate's max_accuracy_drop / min_agreement.
    `publish`: False builds without publishing, a mapping sets publish's options (repo_dir, model_name, ...).
    `settings`: max_sequence_length, intra_op_threads, task, max_build_minutes. Returns the chosen build's report.
    A decoder LM builds through engineforge.build.lm.build (presets lm-int4, lm-int8, lm-nf4, lm-fp32; `budget`:
    max_ppl_increase, min_agreement; `data`: eval_data) and returns an LMBuildReport."""
    return prepare_build(checkpoint, preset=preset, recipe=recipe, steps=steps, output_dir=output_dir, data=data,
                         budget=budget, publish=publish, overwrite=overwrite, **settings).run()


def _refuse_lm_steps(recipe: str | Path | None, steps: Sequence[StepConfig] | None) -> None:
    """Recipes and step lists describe encoder builds; pruning a decoder is refused with the reason."""
    from engineforge.build.lm.build import PRUNING_REFUSAL
    from engineforge.build.presets import load_recipe
    from engineforge.build.steps import PruneConfig

    if recipe is None and steps is None:
        return
    asked = tuple(steps) if steps is not None else tuple(load_recipe(Path(recipe)).get("steps") or ())  # type: ignore[arg-type]
    if any(isinstance(step, PruneConfig) for step in asked):
        raise UnsupportedStepError(PRUNING_REFUSAL)
    raise ConfigError("recipes and step lists describe encoder builds; build a decoder LM with --preset "
                      "lm-int4, lm-int8, lm-nf4 or lm-fp32")


def _lm_publisher(checkpoint: Path, publish: bool | Mapping[str, Any]) -> Callable[[Path], dict[str, Any]] | None:
    """An LM bundle is published only to a repository asked for by name (--repo), by the serving side's
    `publish_lm_bundle`; where that is not installed the build goes on as with --no-publish, and says so."""
    if not isinstance(publish, Mapping) or not publish.get("repo_dir"):
        return None
    repo_dir = Path(publish["repo_dir"])
    model_name = publish.get("model_name") or (checkpoint.stem if checkpoint.suffix == ".gguf" else checkpoint.name)
    try:
        from engineforge.serve.lm_publish import publish_lm_bundle  # type: ignore[import-not-found]
    except ModuleNotFoundError as exc:
        if exc.name != "engineforge.serve.lm_publish":
            raise
        progress.info(f"{repo_dir}: not publishing, engineforge.serve.lm_publish is not installed (built only)")
        return lambda bundle: {"skipped": "engineforge.serve.lm_publish is not installed", "repo_dir": str(repo_dir)}

    def run(bundle: Path) -> dict[str, Any]:
        result = publish_lm_bundle(bundle, repo_dir, model_name)
        published = {"repo_dir": str(repo_dir), "model_name": model_name}
        return {**published, **result} if isinstance(result, dict) else {**published, "result": str(result)}
    return run
