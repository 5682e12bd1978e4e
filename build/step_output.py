"""What one step made, returned instead of written into the shared build state.

A step declares the artefacts it `provides`; the paths it returns here are those artefacts. `run_step` checks one
against the other before applying the output to the build's context, so a declared artefact without its file,
or a file no declaration names, is a typed error at the step that caused it, never a surprise three steps later.
That is why later steps may rely on what `check_build` followed through the recipe: no step re-checks it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engineforge.errors import EngineforgeError

from .config import ENGINE, ONNX_GRAPH, PLAIN_ONNX, PORTABLE_ONNX, QDQ_INT8_ONNX, Artifact, StepConfig

# Which output field holds each artefact (ENGINE: whichever the runtime ships). Artefacts not listed (the torch
# model, its layout, the data) are not files a step hands on.
ARTIFACT_FIELDS: dict[Artifact, tuple[str, ...]] = {
    ONNX_GRAPH: ("onnx_path",), PORTABLE_ONNX: ("onnx_path",), QDQ_INT8_ONNX: ("onnx_path",),
    PLAIN_ONNX: ("plain_onnx_path",), ENGINE: ("onnx_path", "engine_dir", "plan_path"),
}
_ARTIFACT_FIELD_NAMES = frozenset(name for names in ARTIFACT_FIELDS.values() for name in names)


class StepContractError(EngineforgeError):
    """A step returned other artefacts than its config declares (a bug in the step, not in the recipe)."""


@dataclass(frozen=True)
class StepOutput:
    """The details for the report, the artefacts made (None: unchanged) and the facts about them."""

    details: dict[str, Any] = field(default_factory=dict)
    # Artefacts (ARTIFACT_FIELDS).
    onnx_path: Path | None = None  # the current ONNX graph
    plain_onnx_path: Path | None = None  # the unfused export, which static_int8 quantizes
    engine_dir: Path | None = None  # torch-bnb: the save_pretrained directory the bundle ships
    plan_path: Path | None = None  # tensorrt: the serialized plan the bundle ships
    # Facts about them.
    model: Any = None  # a torch model that replaces the current one (bnb_4bit's)
    attention: Any = None  # context.AttentionShape of a pruned model (graph_optimize fuses with it)
    compiled_onnx_path: Path | None = None  # tensorrt: the exact ONNX handed to TensorRT
    tensorrt_metadata: dict[str, Any] | None = None
    precision: str | None = None
    runtime: str | None = None
    published: dict[str, Any] | None = None
    # How the engine is served (plan_serving): length buckets (() = none), threads per instance, the plan's record.
    length_buckets: tuple[int, ...] | None = None
    bucket_max_batch: int | None = None
    intra_op_threads: int | None = None
    serving_plan: dict[str, Any] | None = None

    def made(self) -> dict[str, Any]:
        """Every field set, details aside."""
        return {f.name: value for f in dataclasses.fields(self)
                if f.name != "details" and (value := getattr(self, f.name)) is not None}


def as_output(result: StepOutput | dict[str, Any] | None) -> StepOutput:
    """A step that makes nothing may return only its details (a dict)."""
    return result if isinstance(result, StepOutput) else StepOutput(details=dict(result or {}))


def contract_problems(step: StepConfig, output: StepOutput) -> list[str]:
    """Where the output and the step's declared artefacts disagree, in words."""
    made = set(output.made()) & _ARTIFACT_FIELD_NAMES
    problems = [f"declares it provides {artifact.description} but returned no {' or '.join(names)}"
                for artifact in sorted(step.provides, key=lambda a: a.name)
                if (names := ARTIFACT_FIELDS.get(artifact)) and not made & set(names)]
    declared = {name for artifact in step.provides for name in ARTIFACT_FIELDS.get(artifact, ())}
    problems += [f"returned {name} but declares no artefact it holds" for name in sorted(made - declared)]
    return problems


def check_contract(step: StepConfig, output: StepOutput) -> None:
    if problems := contract_problems(step, output):
        raise StepContractError(f"step '{step.step_type}' " + "; ".join(problems))
