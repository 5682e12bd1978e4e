"""Typed errors. Each message says what went wrong and how to fix it; CLIs print them without a traceback."""

from __future__ import annotations

from typing import Any


class EngineforgeError(Exception):
    """Base class for every error engineforge raises on purpose."""


class UsageError(EngineforgeError):
    """A command was called wrongly (conflicting, missing or unparsable arguments): exit code 2."""


class ConfigError(EngineforgeError, ValueError):
    """A config, recipe or preset is invalid."""


class CheckpointError(EngineforgeError):
    """The input checkpoint is missing, incomplete or unreadable."""


class UnsupportedArchitectureError(CheckpointError):
    """The checkpoint is not a model family the pipeline can build."""


class UnsupportedStepError(ConfigError):
    """A build step cannot work on this checkpoint's model family (the structure it needs does not exist)."""


class StepFailedError(EngineforgeError):
    """A build step raised something other than a typed engineforge error; the message names the step."""


class StepOrderError(ConfigError):
    """Build steps were requested in an order that makes no sense (e.g. pruning after quantization)."""


class MissingPrerequisiteError(StepOrderError):
    """A step needs an artefact (ONNX graph, torch model, calibration data...) that nothing before it provides."""


class DataError(EngineforgeError):
    """Evaluation or calibration data is missing or malformed."""


class ValidationError(EngineforgeError):
    """The optimized engine does not reproduce the reference model closely enough."""


class OutputMismatchError(ValidationError):
    """Raw outputs differ beyond tolerance (e.g. ONNX export vs PyTorch)."""


class AccuracyBudgetExceeded(ValidationError):
    """Task accuracy or agreement fell outside the allowed budget. `figures` holds what each judged engine
    measured (`Comparison.figures()`), so a budget search can say which candidate came closest."""

    def __init__(self, message: str, figures: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.figures = list(figures or [])


class BuildTimeLimitReached(EngineforgeError):
    """A build (a preset's whole ladder) ran out of the wall-clock time it was given (--max-build-minutes)."""


class RepositoryError(EngineforgeError):
    """The Triton model repository cannot be written or read as expected."""


class CompileError(EngineforgeError):
    """A compiler (TensorRT) cannot parse or build the graph it was given."""


class EngineLoadError(EngineforgeError):
    """An engine file is missing, or its runtime cannot load it."""


class ServerError(EngineforgeError):
    """The Triton server could not be started, or stopped unexpectedly."""


class ServerUnavailableError(ServerError):
    """No server answers at the given address."""


class ModelNotReadyError(ServerError):
    """The server answers but the requested model is missing or not ready."""


class InferenceRequestError(EngineforgeError):
    """The server rejected a request (bad input, oversized batch, ...)."""
