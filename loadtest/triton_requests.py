"""One request to Triton over gRPC (KServe v2), using the asyncio client, and how a failed one is classified.

A `TritonRequestFn` (built by loadtest/request_factory.py): `await fn(seq)` sends one (possibly batched) request
and returns a `RequestResult`; it never raises. Payload tensors are built once up front and
re-used (the client only reads them), so the timed loop does no numpy work on the client.
Connections are opened by `grpc_channel.GrpcChannel` (TLS, message sizes, keepalive), as everywhere else.

A request that meets its model reloading (Triton: "has no available versions") is retried within its deadline,
as EngineforgeClient does: users of a served model wait through a reload, so the wait goes into the latency and
the record counts the retries; a reload that outlasts the deadline is a `model_reloading` error.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from engineforge import grpc_errors
from engineforge.grpc_channel import GrpcChannel

from .config import DEFAULT_TIMEOUT_S
from .output_checks import count_correct
from .records import (
    ERR_BAD_OUTPUT,
    ERR_CLIENT,
    ERR_NOT_READY,
    ERR_RELOADING,
    ERR_SERVER,
    ERR_TIMEOUT,
    ERR_UNAVAILABLE,
    RequestResult,
    clock,
    failure,
)

# Turns the decoded outputs (name -> array) into a short summary, or raises ValueError (loadtest/output_checks.py).
OutputCheck = Callable[[dict[str, np.ndarray], int], str]


class TritonRequestFn:
    """One inference per call against `model` at `url`; see module docstring.

    The gRPC channel is created lazily on the first call so that it binds to the running event
    loop (grpc.aio channels cannot move between loops). Call `aclose()` when done.
    """

    def __init__(
        self,
        url: str | GrpcChannel,
        model: str,
        batches: Sequence[list[grpcclient.InferInput]],
        output_names: Sequence[str],
        check: OutputCheck,
        batch_size: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        expected: Sequence[tuple[str, ...]] | None = None,
    ) -> None:
        if not batches:
            raise ValueError("at least one payload batch is required")
        if expected is not None and len(expected) != len(batches):
            raise ValueError(f"{len(expected)} expected-label batches for {len(batches)} payload batches")
        self._expected = list(expected) if expected is not None else None
        self.channel = url if isinstance(url, GrpcChannel) else GrpcChannel(url)
        self.url, self.model, self.batch_size, self.timeout_s = self.channel.url, model, batch_size, timeout_s
        self._batches = list(batches)
        self._outputs = [grpcclient.InferRequestedOutput(name) for name in output_names]
        self._output_names = tuple(output_names)
        self._check = check
        self._client: grpcclient.InferenceServerClient | None = None

    async def __call__(self, seq: int) -> RequestResult:
        start = clock()
        retries = 0
        try:
            if self._client is None:
                self._client = self.channel.aio_client()
            result, retries = await self._infer(seq, start + self.timeout_s)
            latency = clock() - start
        except asyncio.CancelledError:
            raise  # the runner cancels stragglers at the end of a run; let it
        except _Failed as failed:
            exc, retries = failed.exc, failed.retries
            error = grpc_errors.describe(exc)
            if grpc_errors.reloading(exc):
                error = f"model {self.model!r} still reloading after {clock() - start:.1f}s of retries: {error}"
            return dataclasses.replace(failure(start, error, classify_error(exc), self.batch_size,
                                               status=status_name(exc)), retries=retries)
        except Exception as exc:  # anything else is a client-side bug or misuse: record it
            return failure(start, f"{type(exc).__name__}: {exc}", ERR_CLIENT, self.batch_size)

        try:
            arrays = {name: result.as_numpy(name) for name in self._output_names}
            missing = [name for name, arr in arrays.items() if arr is None]
            if missing:
                raise ValueError(f"response has no output(s) {', '.join(missing)}")
            summary = self._check(arrays, self.batch_size)
        except Exception as exc:
            return RequestResult(
                start_s=start,
                latency_s=latency,
                ok=False,
                batch_size=self.batch_size,
                error=f"invalid response: {exc}",
                error_kind=ERR_BAD_OUTPUT,
            )
        correct = None
        if self._expected is not None:  # counted apart from latency: a wrong answer is still an answer
            correct = count_correct(arrays["LABEL"], self._expected[seq % len(self._expected)])
        return RequestResult(start_s=start, latency_s=latency, ok=True, batch_size=self.batch_size, output=summary,
                             correct=correct, retries=retries)

    async def _infer(self, seq: int, deadline: float) -> tuple[Any, int]:
        """One inference, retried while its model reloads (until `deadline`); _Failed carries the last error."""
        retries, delay = 0, 0.05
        while True:
            try:
                return await self._client.infer(
                    self.model,
                    self._batches[seq % len(self._batches)],
                    outputs=self._outputs,
                    request_id=str(seq),
                    client_timeout=max(deadline - clock(), 0.001),
                ), retries
            except InferenceServerException as exc:
                if not grpc_errors.reloading(exc) or clock() + delay >= deadline:
                    raise _Failed(exc, retries) from None
            retries += 1
            await asyncio.sleep(delay)
            delay = min(2 * delay, 0.5)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        await close_quietly(client)


async def close_quietly(client: Any) -> None:
    """Close a request function's gRPC client, if it opened one."""
    if client is not None:
        try:
            await client.close()
        except Exception:  # closing a broken channel must not hide the run's results
            pass


class _Failed(Exception):
    def __init__(self, exc: InferenceServerException, retries: int) -> None:
        super().__init__(str(exc))
        self.exc, self.retries = exc, retries


def status_name(exc: InferenceServerException) -> str:
    """The gRPC status code of a failed call, e.g. "INVALID_ARGUMENT" (tritonclient gives "StatusCode.X")."""
    status = exc.status()
    return str(status).rsplit(".", 1)[-1] if status else "UNKNOWN"


def classify_error(exc: InferenceServerException) -> str:
    if grpc_errors.reloading(exc):
        return ERR_RELOADING
    kind = grpc_errors.kind_of(exc)
    return {grpc_errors.TIMEOUT: ERR_TIMEOUT, grpc_errors.UNAVAILABLE: ERR_UNAVAILABLE,
            grpc_errors.TLS: ERR_UNAVAILABLE, grpc_errors.NOT_READY: ERR_NOT_READY}.get(kind, ERR_SERVER)
