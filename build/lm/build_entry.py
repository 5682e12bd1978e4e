"""Where the one build entry (`engineforge.commands.build_engine`, hence `build-engine`) turns to the LM build: a
causal-LM checkpoint (`*ForCausalLM` directory or `.gguf`), `--task text-generation` or an `lm-*` preset.

The request is checked here before any work, like an encoder build's candidates: an encoder preset given to an LM
(or an `lm-*` preset to an encoder), encoder-only options, missing or malformed eval data are refused with the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engineforge.errors import ConfigError, UnsupportedArchitectureError
from engineforge.lm.bundle import TEXT_GENERATION

from .build import build_lm_engine, check_lm_request
from .checkpoint import is_causal_lm
from .eval_data import read_lm_eval_data
from .presets import DEFAULT_LM_PRESET, LM_PRESET_NAMES, is_lm_preset
from .quality import LMBudget
from .report import LMBuildReport

DEFAULT_BUILDS_DIR = Path("artifacts/builds")
# Encoder-build options an LM build has no use for: refused rather than silently ignored.
_ENCODER_ONLY = {"train_data": "--train-data", "calibration_data": "--calibration-data",
                 "unlabelled_data": "--unlabelled-data", "traffic_data": "--traffic-data",
                 "max_sequence_length": "--max-seq-len", "max_build_minutes": "--max-build-minutes",
                 "max_accuracy_drop": "--max-accuracy-drop", "long_texts": "--long-texts", "text_path": "--text-path"}


def is_lm_request(checkpoint: str | Path | None, preset: str | None, task: str | None) -> bool:
    """True when the build is a decoder-LM build; ConfigError when the preset and the checkpoint disagree."""
    if task is not None and task != TEXT_GENERATION:
        if is_lm_preset(preset):
            raise ConfigError(f"--task {task} is an encoder task; preset {preset} builds decoder LMs: drop --task "
                              "or choose an encoder preset")
        return False
    lm_checkpoint = checkpoint is not None and is_causal_lm(Path(checkpoint))
    if task == TEXT_GENERATION or lm_checkpoint:
        if preset is not None and not is_lm_preset(preset):
            raise ConfigError(f"preset {preset!r} builds encoders; {checkpoint} is a decoder LM (text-generation): "
                              f"choose one of {', '.join(LM_PRESET_NAMES)} (default {DEFAULT_LM_PRESET}) or leave "
                              "--preset out")
        return True
    if is_lm_preset(preset):
        raise ConfigError(f"preset {preset} builds decoder LMs (*ForCausalLM or .gguf); {checkpoint} is not one: "
                          "choose an encoder preset (e.g. int8) or leave --preset out")
    return False


@dataclass(frozen=True)
class PreparedLMBuild:
    """A checked LM build, ready to run (what `prepare_build` returns for an LM)."""

    checkpoint: Path
    eval_data: Path
    output_dir: Path
    preset: str
    budget: LMBudget
    threads: int | None = None
    publish: Callable[[Path], dict[str, Any]] | None = None  # the serving side's publisher, when asked for
    overwrite: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # build_lm_engine's other keywords

    def run(self) -> LMBuildReport:
        return build_lm_engine(self.checkpoint, self.eval_data, self.output_dir, preset=self.preset,
                               budget=self.budget, threads=self.threads, publish=self.publish,
                               overwrite=self.overwrite, **self.options)


def prepare_lm_build(checkpoint: str | Path, *, preset: str | None = None, output_dir: str | Path | None = None,
                     data: Mapping[str, str | Path | None] | None = None,
                     budget: Mapping[str, float | None] | None = None, publish: bool | Mapping[str, Any] = True,
                     overwrite: bool = False, publisher: Callable[[Path], dict[str, Any]] | None = None,
                     **settings: Any) -> PreparedLMBuild:
    """The LM build `build_engine`'s arguments ask for, checked (the eval data parsed) before any work.
    `publisher`: how the chosen bundle is published (the build entry makes it from `publish`); None: not."""
    checkpoint = Path(checkpoint)
    if settings.get("task") == TEXT_GENERATION and checkpoint.suffix != ".gguf" and not is_causal_lm(checkpoint):
        raise UnsupportedArchitectureError(f"--task {TEXT_GENERATION} needs a causal LM (*ForCausalLM directory or "
                                           f".gguf file); {checkpoint} is not one")
    data, budget = dict(data or {}), dict(budget or {})
    publish_options = dict(publish) if isinstance(publish, Mapping) else {}
    given = {**data, **budget, **publish_options, **settings}
    if unused := [flag for key, flag in _ENCODER_ONLY.items() if given.get(key) is not None]:
        raise ConfigError(f"{', '.join(unused)}: encoder-build option(s) an LM build does not use; leave them out "
                          "(an LM build is judged by --max-ppl-increase and --min-agreement)")
    eval_data = data.get("eval_data")
    preset = preset or DEFAULT_LM_PRESET
    check_lm_request(preset, Path(eval_data) if eval_data is not None else None, bool(settings.get("prune")))
    read_lm_eval_data(Path(eval_data))  # type: ignore[arg-type]  # a data problem is found before any work
    name = checkpoint.stem if checkpoint.suffix == ".gguf" else checkpoint.name
    lm_budget = LMBudget.uniform(budget.get("max_ppl_increase"), budget.get("min_agreement"))
    return PreparedLMBuild(
        checkpoint, Path(eval_data), Path(output_dir) if output_dir else DEFAULT_BUILDS_DIR / name,  # type: ignore[arg-type]
        preset, lm_budget, settings.get("intra_op_threads"),
        publish=publisher, overwrite=overwrite)
