"""Triton's gRPC failures as engineforge's typed errors: the one place that reads status codes and messages.

The client (`EngineforgeClient`), the load generator's request functions and its server check all
classify failures here, so "no server", "model not ready", "timed out", "the server failed" and "the
request was rejected" mean the same thing everywhere.
"""

from __future__ import annotations

from engineforge.errors import (
    EngineforgeError,
    InferenceRequestError,
    ModelNotReadyError,
    ServerError,
    ServerUnavailableError,
)

UNAVAILABLE = "unavailable"  # nothing answers at the address (refused, reset, closed)
TIMEOUT = "timeout"  # no answer within the deadline
NOT_READY = "not_ready"  # the server answers but the model is missing or not ready
SERVER = "server"  # the server failed while handling a valid request (INTERNAL)
REJECTED = "rejected"  # the request itself is wrong (INVALID_ARGUMENT and the like)


def status_of(exc: BaseException) -> str:
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    return str(status or "")


def message_of(exc: BaseException) -> str:
    message = exc.message() if callable(getattr(exc, "message", None)) else None
    return str(message or exc)


def describe(exc: BaseException) -> str:
    return f"[{status_of(exc) or 'error'}] {message_of(exc)}"


def kind_of(exc: BaseException) -> str:
    status, message = status_of(exc), message_of(exc)
    # gRPC says UNAVAILABLE for transport failures; Triton's own UNAVAILABLE answers are about a model, and name it.
    if status.endswith("UNAVAILABLE") and "model" not in message.lower():
        return UNAVAILABLE
    if status.endswith("DEADLINE_EXCEEDED"):
        return TIMEOUT
    if "unknown model" in message or "is not ready" in message:
        return NOT_READY
    if status.endswith("INTERNAL"):
        return SERVER
    return REJECTED


def unavailable(url: str, detail: str = "") -> ServerUnavailableError:
    return ServerUnavailableError(f"no Triton server answers at {url} — start it with `engineforge serve`"
                                  + (f" ({detail})" if detail else ""))


def to_error(exc: BaseException, url: str, model: str | None = None, timeout_s: float | None = None,
             ready_models: str = "") -> EngineforgeError:
    """The typed error for a failed call; `ready_models` lists what is ready, for NOT_READY."""
    kind, message = kind_of(exc), message_of(exc)
    if kind == UNAVAILABLE:
        return unavailable(url, message)
    if kind == TIMEOUT:
        within = f" within {timeout_s:g}s" if timeout_s is not None else ""
        return ServerError(f"Triton at {url} gave no answer{within} ({message})")
    if kind == NOT_READY and model is not None:
        return ModelNotReadyError(f"model {model!r} is not ready on Triton at {url}; ready models: "
                                  f"{ready_models or 'none'}")
    if kind == SERVER:
        return ServerError(f"Triton at {url} failed while running {model or 'the request'}: {message}")
    return InferenceRequestError(f"{model or 'server'} rejected the request: {message}")
