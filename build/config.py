"""Build configuration: the base class of every step config, the artefacts steps pass on, and BuildConfig.

Every step config is a frozen dataclass validated on creation (the message names the fix) and carries:
- `step_type`: its name in recipe files (and its module's name in build/steps/);
- `stage`: its place in the pipeline. Stages encode the order that makes sense (prune before quantize,
  quantize the torch model before exporting, optimize the ONNX graph before quantizing it, validate after
  everything that changes numerics, publish last);
- the artefacts it `requires`, `provides` and `removes`, so a recipe that cannot work (quantizing with
  nothing exported, calibrating without calibration data) is refused before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from engineforge.engines.engine_spec import TASKS
from engineforge.errors import ConfigError

# Stage numbers leave gaps so later steps slot in.
STAGE_PRUNE = 10
STAGE_DISTILL = 20
STAGE_TORCH_QUANTIZE = 30
STAGE_EXPORT = 40
STAGE_GRAPH_OPTIMIZE = 50
STAGE_ONNX_QUANTIZE = 60
STAGE_COMPILE = 70
STAGE_PLAN_SERVING = 75  # after the runtime is chosen, before validate measures the engine as served
STAGE_VALIDATE = 80
STAGE_PUBLISH = 90


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class Artifact:
    """Something a step needs: made by an earlier step, or supplied by the user (`supplied_by` says how)."""

    name: str
    description: str
    supplied_by: str = ""


TORCH_MODEL = Artifact("torch_model", "an exportable PyTorch model")  # the loaded checkpoint, until replaced
# from_pretrained can rebuild the model from its config (pruning leaves a per-layer layout it cannot).
STANDARD_LAYOUT = Artifact("standard_layout", "the model in its checkpoint's standard layout")
ONNX_GRAPH = Artifact("onnx_graph", "an ONNX graph")
PLAIN_ONNX = Artifact("plain_onnx", "the plain (unfused) ONNX export")
# Standard ONNX ops only: what compilers other than ONNX Runtime (TensorRT) can parse.
PORTABLE_ONNX = Artifact("portable_onnx", "an ONNX graph of standard ONNX ops (no ONNX Runtime-only ops)")
QDQ_INT8_ONNX = Artifact("qdq_int8_onnx", "a Q/DQ int8 ONNX graph (explicit quantization)")
ENGINE = Artifact("engine", "an engine (an ONNX graph or a torch-served model)")
EVAL_DATA = Artifact("eval_data", "labelled eval data",
                     "pass --eval-data FILE.jsonl (lines of {\"text\": ..., \"label\": ...}), "
                     "or eval_data in the recipe")
CALIBRATION_DATA = Artifact("calibration_data", "representative calibration data to fix int8 activation ranges",
                            "pass --calibration-data FILE (.jsonl/.csv with a 'text' column; a few hundred real "
                            "requests, e.g. your training texts), or use the dynamic 'int8' preset, which needs none")
TRAINING_TEXT = Artifact("training_text", "representative training text",
                         "pass --train-data FILE (JSONL/CSV with a 'text' column, labels optional) or "
                         "--calibration-data FILE, or train_data in the recipe")
DISTILLATION_TEXT = Artifact("distillation_text", "text to distil on",
                             "pass --train-data FILE and/or --unlabelled-data FILE (in-domain text the fp32 "
                             "model labels), or train_data / unlabelled_data in the recipe")


MODEL, ORDER, PREREQUISITE, SETTING = "model", "order", "prerequisite", "setting"  # kinds of Blocker


@dataclass(frozen=True)
class Blocker:
    """One reason a recipe cannot run, found before any work. `reason` follows "step 'X' " and holds no fix: a
    refusal lists every blocker once and ends with one fix for all of them. Order, prerequisite and setting
    blockers carry their own `fix` (move a step, pass a data file); a model blocker (what the checkpoint's family
    or task cannot do) is removed by `changes` to its step's options, or by dropping the step (`changes` None)."""

    step: str
    reason: str
    kind: str = SETTING
    fix: str = ""
    changes: tuple[tuple[str, Any], ...] | None = None


@dataclass(frozen=True)
class StepConfig:
    """Base class: subclasses set `step_type`, `stage` and their artefacts."""

    step_type: ClassVar[str] = ""
    stage: ClassVar[int] = 0
    requires: ClassVar[frozenset[Artifact]] = frozenset()
    provides: ClassVar[frozenset[Artifact]] = frozenset()
    # Artefacts later steps can no longer use, with the reason (bitsandbytes layers have no ONNX export).
    removes: ClassVar[frozenset[Artifact]] = frozenset()
    removes_reason: ClassVar[str] = ""
    # A step that only recovers what another changed (distill after prune): a fix dropping that one drops it too.
    pointless_without: ClassVar[str] = ""
    # The module registering this step's function when it lives in a higher layer (publish: engineforge.serve).
    registered_by: ClassVar[str] = ""

    def prerequisites(self) -> frozenset[Artifact]:
        """What this configured step needs; a step whose needs depend on its options overrides this."""
        return self.requires

    def check_in(self, build: BuildConfig) -> None:
        """Refuse settings that contradict the rest of the build (raise ConfigError with the fix); run before
        any work. Most steps stand alone; a step whose options depend on others overrides this."""

    def check_environment(self) -> None:
        """Refuse, with a typed error and the fix, what this machine lacks for the step (TensorRT for compile);
        run before any work. Most steps need only the base install."""

    def family_problem(self, family: Any) -> str:
        """Why this configured step cannot run on an encoder family (`families.EncoderFamily`), or "" if it can.
        Most steps work on every family; a step that depends on the module layout overrides this."""
        return ""

    def task_problem(self, task: str) -> str:
        """Why this configured step cannot serve a task ("token-classification", ...), or "" if it can."""
        return ""

    def model_blockers(self, family: Any, task: str | None) -> list[Blocker]:
        """Everything stopping this configured step on the checkpoint's family (None: unknown) and task; each
        drops the step. A step where an option change is enough (prune: heads only) overrides this."""
        found = []
        if family is not None and (reason := self.family_problem(family)):
            found.append(Blocker(self.step_type, f"cannot run on {family.name} checkpoints: {reason}", MODEL))
        if task and (reason := self.task_problem(task)):
            found.append(Blocker(self.step_type, f"cannot build a {task} model: {reason}", MODEL))
        return found

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-shaped: tuples become lists, so a dict survives a round trip through the report."""
        return {"type": self.step_type, **{k: list(v) if isinstance(v, tuple) else v
                                           for k, v in dataclasses.asdict(self).items()}}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StepConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        require(not unknown, f"step '{cls.step_type}' has no option(s) {unknown}; valid options: {sorted(known)}")
        return cls(**values)


DATA_FIELDS = ("eval_data", "train_data", "calibration_data", "unlabelled_data", "traffic_data")


@dataclass(frozen=True)
class BuildConfig:
    """A whole build: input, data, ordered steps and where results go."""

    checkpoint: Path
    output_dir: Path
    steps: tuple[StepConfig, ...]
    eval_data: Path | None = None
    # Labelled (or unlabelled) training text: pruning importance and distillation read it.
    train_data: Path | None = None
    # Representative inputs for static quantization ranges; never invented when absent.
    calibration_data: Path | None = None
    # Unlabelled in-domain text (e.g. production logs): the distill step labels it with the fp32 teacher.
    unlabelled_data: Path | None = None
    # Real requests (a 'text' column; labels unused): the traffic profile runtimes are timed on. Without it the
    # profile comes from the eval, calibration or training texts (build/traffic_profile.py).
    traffic_data: Path | None = None
    max_sequence_length: int = 128
    # Threads the engine runtime may use when the engine is served (and when validated and timed here).
    intra_op_threads: int = 2
    overwrite: bool = False
    preset: str | None = None
    # None = read from the checkpoint (build/tasks.py); "text-classification" or "embeddings" forces it.
    task: str | None = None
    # Wall-clock budget of the whole build (a preset's whole ladder): build/search.py enforces it.
    max_build_minutes: float | None = None
    # The running ladder's deadline (a `time_limit.TimeLimit`), set by the search for its candidates; the
    # distill step stops at a step boundary once it has passed. Not a setting: never written to a recipe.
    time_limit: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        for name in DATA_FIELDS:
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "steps", tuple(self.steps))
        require(len(self.steps) > 0, "a build needs at least one step (e.g. preset 'int8')")
        require(8 <= self.max_sequence_length <= 8192,
                f"max_sequence_length={self.max_sequence_length}: use 8..8192 (and <= the model's positions)")
        require(self.intra_op_threads >= 1, "intra_op_threads must be >= 1")
        require(self.task is None or self.task in TASKS,
                f"task={self.task!r}: use 'text-classification', 'token-classification' or 'embeddings' (or "
                "leave it to the checkpoint)")
        require(self.max_build_minutes is None or self.max_build_minutes > 0,
                f"max_build_minutes={self.max_build_minutes}: give minutes > 0, or leave it out for no limit")

    def step(self, config_type: type[StepConfig]) -> StepConfig | None:
        return next((s for s in self.steps if isinstance(s, config_type)), None)

    def inputs(self) -> frozenset[Artifact]:
        """Artefacts available before the first step: the checkpoint's model and the data files given."""
        given = {name for name in DATA_FIELDS if getattr(self, name) is not None}
        available = {TORCH_MODEL, STANDARD_LAYOUT}
        if "eval_data" in given:
            available.add(EVAL_DATA)
        if "calibration_data" in given:
            available.add(CALIBRATION_DATA)
        if given & {"train_data", "calibration_data"}:
            available.add(TRAINING_TEXT)
        if given & {"train_data", "calibration_data", "unlabelled_data"}:
            available.add(DISTILLATION_TEXT)
        return frozenset(available)
