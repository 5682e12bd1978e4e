"""A retrying gRPC connection to Triton: the transport under EngineforgeClient.

Inference is idempotent, so failures that a restart or a reload repairs (no server, model not ready or
reloading, a dead python stub) are retried with jittered exponential backoff until the call's deadline
(`timeout_s`, for the whole call, retries included; retries stop after `retry_s`). A rejected request, a restricted
call without the control key (PermissionDeniedError) and a TLS mismatch are never retried. Errors come back typed
(engineforge.grpc_errors). Connections go through `grpc_channel.GrpcChannel`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from engineforge import grpc_errors
from engineforge.defaults import DEFAULT_GRPC_URL
from engineforge.errors import ModelNotReadyError
from engineforge.grpc_channel import CONTROL_HEADER, ClientTls, GrpcChannel, TlsFiles

C = TypeVar("C", bound="Connection")
T = TypeVar("T")


class NotReadyYet(Exception):
    """The model answers is_model_ready False: retryable like Triton's own "not ready" errors."""


def retryable(exc: BaseException) -> bool:
    """Failures a supervisor's restart or reload repairs; anything about the request itself is final."""
    if isinstance(exc, NotReadyYet):
        return True
    kind = grpc_errors.kind_of(exc)
    return kind in (grpc_errors.UNAVAILABLE, grpc_errors.NOT_READY) or (
        kind == grpc_errors.SERVER and "is not healthy" in grpc_errors.message_of(exc))


class Connection:
    """A gRPC connection to Triton whose calls retry what a restart or reload repairs, within one deadline."""

    def __init__(self, url: str = DEFAULT_GRPC_URL, *, timeout_s: float = 30.0, retry: bool = True,
                 retry_s: float = 10.0, tls: ClientTls | TlsFiles | None = None, control_key: str | None = None,
                 log: Callable[[str], None] | None = None, timeout_option: str = "timeout_s") -> None:
        import tritonclient.grpc as grpcclient

        self.url = url
        self.timeout_s = timeout_s
        self.retry = retry
        self.retry_s = retry_s  # how long repairable failures are retried, within the call's deadline
        self._log = log  # told once per call when it waits for a server to answer or a reloading model
        self._timeout_option = timeout_option  # how the caller sets timeout_s, named when it waits ("--timeout")
        self._grpc = grpcclient
        self.channel = GrpcChannel(url, ClientTls.of(tls))
        self._client = self.channel.client()  # connects lazily
        self._headers = {CONTROL_HEADER: control_key} if control_key else None  # for the restricted index

    def _call(self, fn: Callable[[float], T], model: str | None = None) -> T:
        """fn(seconds left) until it succeeds, fails for good, or the deadline passes; errors typed."""
        started = time.monotonic()
        deadline, retry_until = started + self.timeout_s, started + min(self.retry_s, self.timeout_s)
        delay, probed, told, told_down = 0.05, False, False, False
        while True:
            try:
                return fn(max(deadline - time.monotonic(), 0.001))
            except Exception as exc:
                retried = time.monotonic() - started
                if not (self.retry and retryable(exc)) or time.monotonic() + delay >= retry_until:
                    if isinstance(exc, NotReadyYet) and model is not None:
                        raise self._not_ready(model, retried) from None
                    raise self._translate(exc, model, retried) from exc
                if not probed and grpc_errors.kind_of(exc) == grpc_errors.UNAVAILABLE:
                    probed = True  # a hang-up may be a TLS port met in plaintext (or the reverse): retrying can't help
                    mismatch = grpc_errors.tls_mismatch(exc, self.url, self.channel.secure)
                    if mismatch is not None:
                        raise mismatch from exc
                if not told_down and self._log is not None and grpc_errors.refused(exc):
                    told_down = True  # said at once: the retries that follow may last the whole deadline
                    self._log(grpc_errors.no_server_retrying(self.url, retry_until - started, self._timeout_option))
                if not told and self._log is not None and grpc_errors.reloading(exc):
                    told = True
                    self._log(f"model {model!r} is reloading on Triton at {self.url} "
                              f"({grpc_errors.message_of(exc)}); retrying for up to {self.retry_s:g}s")
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 1.0)

    def close(self) -> None:
        self._client.close()

    def __enter__(self: C) -> C:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _translate(self, exc: Exception, model: str | None = None, retried_s: float | None = None) -> Exception:
        ready = ""
        if model is not None and grpc_errors.kind_of(exc) == grpc_errors.NOT_READY:
            self._forget(model)
            ready = self._ready_listing()
        return grpc_errors.to_error(exc, self.url, model, self.timeout_s, ready, tls=self.channel.secure,
                                    retried_s=retried_s if self.retry else None)

    def _forget(self, model: str) -> None:
        """Drop what is cached about `model` (it is not ready: it may come back as another version)."""

    def _ready_listing(self) -> str:
        try:
            return ", ".join(self.ready_models())
        except Exception:  # restricted index (needs the control key), or the server went away meanwhile
            return "unknown (listing them needs the control key)" if self._headers is None else "unknown"

    def _not_ready(self, model: str, retried_s: float) -> ModelNotReadyError:
        waited = f"; retried for {retried_s:.0f}s" if self.retry and retried_s >= 1 else ""
        return ModelNotReadyError(grpc_errors.model_not_ready(
            model, self.url, f"is not ready (loading, reloading or unloaded{waited})", self._ready_listing() or "none"))

    def is_server_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready(client_timeout=self.timeout_s))
        except Exception as exc:
            raise self._translate(exc) from exc

    def model_ready(self, model: str) -> bool:
        """Whether `model` is loaded and ready (public: no control key); waits for the server like every call."""
        return bool(self._call(lambda timeout: self._client.is_model_ready(model, client_timeout=timeout)))

    def ready_models(self) -> list[str]:
        """READY models from the repository index (restricted by `engineforge serve`: needs control_key; without
        it PermissionDeniedError says so)."""
        try:
            index = self._client.get_model_repository_index(headers=self._headers, client_timeout=self.timeout_s)
        except Exception as exc:
            if grpc_errors.kind_of(exc) == grpc_errors.FORBIDDEN:
                raise grpc_errors.control_key_missing(self.url, "the repository index") from exc
            raise self._translate(exc) from exc
        return sorted({m.name for m in index.models if m.state == "READY"})
