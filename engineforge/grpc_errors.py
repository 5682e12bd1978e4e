"""Triton's gRPC failures as engineforge's typed errors: the one place that reads status codes and messages.

The client (`EngineforgeClient`), the load generator's request functions and its server check all
classify failures here, so "no server", "model not ready", "model reloading", "control key missing", "TLS
mismatch", "timed out", "the server failed" and "the request was rejected" mean the same thing everywhere.
"""

from __future__ import annotations

from engineforge.errors import (
    EngineforgeError,
    InferenceRequestError,
    ModelNotReadyError,
    ServerError,
    ServerUnavailableError,
)

from .grpc_channel import CONTROL_HEADER, speaks_tls

UNAVAILABLE = "unavailable"  # nothing answers at the address (refused, reset, closed)
TIMEOUT = "timeout"  # no answer within the deadline
NOT_READY = "not_ready"  # the server answers but the model is missing, not ready, or reloading
SERVER = "server"  # the server failed while handling a valid request (INTERNAL)
REJECTED = "rejected"  # the request itself is wrong (INVALID_ARGUMENT and the like)
FORBIDDEN = "forbidden"  # a restricted API called without the control key (Triton says UNAVAILABLE: never retry it)
TLS = "tls"  # the TLS handshake failed: the two sides disagree on TLS or certificates (retrying cannot help)

# Triton's words while no version of a model is loaded: between an unload and the next load (a reload), or
# while the first load runs ("Request for unknown model: 'x' has no available versions", "... is not at ready state").
_RELOADING = ("has no available versions", "is not at ready state")
_NOT_READY = ("unknown model", "is not ready", *_RELOADING)
_TLS = ("handshake", "SSL_ERROR", "CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER")
# How a plaintext client sees a TLS port (the server hangs up on its HTTP/2 preface); also a server going away.
_HUNG_UP = ("Socket closed", "Connection reset", "Broken pipe", "connection closed")


class PermissionDeniedError(ServerError):
    """The server refused a restricted call (model control, the repository index) made without the control key."""


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
    if ("is restricted" in message and "expecting header" in message) or status.endswith(
            ("PERMISSION_DENIED", "UNAUTHENTICATED")):
        return FORBIDDEN
    if status.endswith("UNAVAILABLE") and any(sign in message for sign in _TLS):
        return TLS
    # gRPC says UNAVAILABLE for transport failures; Triton's own UNAVAILABLE answers are about a model, and name it.
    if status.endswith("UNAVAILABLE") and "model" not in message.lower():
        return UNAVAILABLE
    if status.endswith("DEADLINE_EXCEEDED"):
        return TIMEOUT
    if any(sign in message for sign in _NOT_READY):
        return NOT_READY
    if status.endswith("INTERNAL"):
        return SERVER
    return REJECTED


def reloading(exc: BaseException) -> bool:
    """Triton answered that no version of the model is loaded right now: it is being (re)loaded or was unloaded."""
    return kind_of(exc) == NOT_READY and any(sign in message_of(exc) for sign in _RELOADING)


def refused(exc: BaseException) -> bool:
    """The connection was refused: nothing listens at the address (no server, or one not started yet)."""
    return kind_of(exc) == UNAVAILABLE and "connection refused" in message_of(exc).lower()


def model_not_ready(model: str, url: str, why: str = "is not ready", ready: str = "") -> str:
    """The one wording of "this model cannot answer", for the client and the load tester alike."""
    return f"model {model!r} {why} on the Triton server at {url}" + (f"; ready models: {ready}" if ready else "")


def no_server_retrying(url: str, retry_s: float, timeout_option: str) -> str:
    """Said at once when a call that retries finds nothing listening, so a user is not left waiting in silence."""
    return (f"no server answers at {url} (connection refused); retrying for up to {retry_s:g}s ({timeout_option}); "
            "start one with `engineforge serve`")


def unavailable(url: str, detail: str = "") -> ServerUnavailableError:
    return ServerUnavailableError(f"no Triton server answers at {url} — start it with `engineforge serve`"
                                  + (f" ({detail})" if detail else ""))


def tls_mismatch(exc: BaseException, url: str, tls: bool) -> ServerUnavailableError | None:
    """The error for a connection that failed because the two sides disagree on TLS, or None. A plaintext client
    only sees its connection closed, so the port is probed with a TLS handshake before it is blamed."""
    kind, message = kind_of(exc), message_of(exc)
    if not tls:
        if kind == UNAVAILABLE and any(sign in message for sign in _HUNG_UP) and speaks_tls(url):
            return ServerUnavailableError(
                f"the server at {url} speaks TLS, and this client connected without it: pass --tls-ca CA.pem (the "
                "CA that signed the server's certificate; and --tls-cert/--tls-key when it asks for client "
                "certificates)")
        return None
    if kind == TLS and "CERTIFICATE_VERIFY_FAILED" in message:
        return ServerUnavailableError(f"the TLS certificate of the server at {url} is not signed by the CA this "
                                      f"client trusts: pass the CA that signed it with --tls-ca ({message})")
    if kind == TLS and ("WRONG_VERSION_NUMBER" in message or not speaks_tls(url)):
        return ServerUnavailableError(f"the server at {url} does not speak TLS: drop --tls-ca/--tls-cert/--tls-key "
                                      f"or serve with --tls-cert/--tls-key ({message})")
    if kind == TLS:
        return ServerUnavailableError(f"the TLS handshake with {url} failed: {message}")
    if kind == UNAVAILABLE and any(sign in message for sign in _HUNG_UP) and speaks_tls(url):
        return ServerUnavailableError(
            f"the server at {url} closed the TLS connection: it asks for a client certificate signed by the CA it "
            f"trusts (--tls-cert/--tls-key), or refused the one given ({message})")
    return None


def control_key_missing(url: str, what: str = "this call") -> PermissionDeniedError:
    return PermissionDeniedError(
        f"Triton at {url} refused {what}: model control and the repository index are restricted to callers that "
        f"send the control key (header {CONTROL_HEADER!r}), and this call carried none or a wrong one; pass the "
        "key `engineforge serve` wrote to its --control-key-file (default: control.key beside the server log) — "
        "--control-key-file on the command line, control_key= to EngineforgeClient")


def to_error(exc: BaseException, url: str, model: str | None = None, timeout_s: float | None = None,
             ready_models: str = "", *, tls: bool = False, retried_s: float | None = None) -> EngineforgeError:
    """The typed error for a failed call; `ready_models` lists what is ready, for NOT_READY; `tls`: whether the
    client spoke TLS; `retried_s`: how long the call was retried."""
    kind, message = kind_of(exc), message_of(exc)
    if kind == FORBIDDEN:
        return control_key_missing(url)
    if kind in (TLS, UNAVAILABLE):
        mismatch = tls_mismatch(exc, url, tls)
        if mismatch is not None:
            return mismatch
        waited = f"; retried for {retried_s:.1f}s" if retried_s and retried_s >= 0.1 else ""
        return unavailable(url, ("connection refused" if refused(exc) else message) + waited)
    if kind == TIMEOUT:
        within = f" within {timeout_s:g}s" if timeout_s is not None else ""
        return ServerError(f"Triton at {url} gave no answer{within} ({message})")
    if kind == NOT_READY and model is not None:
        ready = f"ready models: {ready_models or 'none'}"
        if reloading(exc):
            waited = f", still after {retried_s:.0f}s of retries" if retried_s else ""
            return ModelNotReadyError(f"model {model!r} is reloading on Triton at {url}: no version of it is loaded "
                                      f"right now{waited} (Triton: {message}); {ready}")
        return ModelNotReadyError(f"model {model!r} is not ready on Triton at {url}; {ready}")
    if kind == SERVER:
        return ServerError(f"Triton at {url} failed while running {model or 'the request'}: {message}")
    return InferenceRequestError(f"{model or 'server'} rejected the request: {message}")
