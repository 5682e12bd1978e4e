"""One streamed generation against a decoupled Triton model over gRPC (`--mode generate`).

The LM serving contract: inputs TEXT (BYTES [1]) and optionally MAX_TOKENS (INT32 [1]); the model streams one
response per decoded piece with TEXT (BYTES) and TOKEN_IDS (INT64 [-1]); the final response carries
FINISH_REASON (BYTES), PROMPT_TOKENS and COMPLETION_TOKENS (INT32), or is empty. Each request opens its own
bidirectional stream (`tritonclient.grpc.aio` `stream_infer`) with one request on it, so concurrent requests never
share a stream's ordering, and asks for Triton's final-response flag (`triton_enable_empty_final_response`): the
flag, not the stream closing, says the generation is over. `await fn(seq)` never raises; it returns a
`GenerationRecord` (loadtest/generate_records.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import InferResult
from tritonclient.grpc._utils import _get_inference_request

from engineforge import grpc_errors
from engineforge.errors import ConfigError
from engineforge.grpc_channel import GrpcChannel

from .config import DEFAULT_TIMEOUT_S, LoadTestConfig
from .generate_records import GenerationRecord, StreamCollector
from .prompts import GenerateRequest, request_plan
from .records import ERR_BAD_OUTPUT, ERR_CLIENT, ERR_SERVER, ERR_TIMEOUT, ERR_UNAVAILABLE, clock
from .triton_requests import close_quietly

# The streamed piece's text (an output may not share the TEXT input's name in a Triton model config).
TEXT_OUTPUT = "TEXT_OUTPUT"

FINAL_FLAG = "triton_final_response"


class GenerateRequestFn:
    """Streams `plan[(seq + plan_offset) % len(plan)]` to `model`; the client is opened lazily inside the running
    event loop (grpc.aio channels cannot move between loops). Call `aclose()` when done."""

    def __init__(self, channel: GrpcChannel, model: str, plan: Sequence[GenerateRequest],
                 timeout_s: float = DEFAULT_TIMEOUT_S, plan_offset: int = 0) -> None:
        if not plan:
            raise ValueError("at least one generate request is required")
        self.channel, self.model, self.timeout_s = channel, model, timeout_s
        self.batch_size = 1
        self._inputs = [_inputs(request) for request in plan]  # built once: the timed loop does no numpy work
        self._plan = list(plan)
        self.plan_offset = plan_offset
        self._outputs = [grpcclient.InferRequestedOutput(n) for n in
                         (TEXT_OUTPUT, "TOKEN_IDS", "FINISH_REASON", "PROMPT_TOKENS", "COMPLETION_TOKENS")]
        self._client: Any = None

    async def __call__(self, seq: int) -> GenerationRecord:
        index = (seq + self.plan_offset) % len(self._plan)
        request = self._plan[index]
        start = clock()
        collector = StreamCollector(start)
        meta = {"max_tokens": request.max_tokens, "prompt_chars": len(request.prompt), "plan_index": index}
        try:
            if self._client is None:
                self._client = self.channel.aio_client()
            error = await self._stream(seq, index, collector)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # the runner cancels stragglers at the end of a level
            # grpc.aio raises CancelledError for a call cancelled on the client's side (not this task): a record
            return collector.record(clock(), ok=False, error="the gRPC stream was cancelled on the client side",
                                    error_kind=ERR_CLIENT, status="CANCELLED", **meta)
        except Exception as exc:  # gRPC failures (deadline, refused) and client-side bugs alike become records
            kind = _classify(exc)
            message = grpc_errors.describe(exc) if kind != ERR_CLIENT else f"{type(exc).__name__}: {exc}"
            return collector.record(clock(), ok=False, error=message, error_kind=kind,
                                    status=_status(exc), **meta)
        end = clock()
        if error is not None:
            return collector.record(end, ok=False, error=error[0], error_kind=error[1], **meta)
        return collector.record(end, **meta)

    async def _stream(self, seq: int, index: int, collector: StreamCollector) -> tuple[str, str] | None:
        """Read the stream to its final response; (message, kind) when it failed, None when it finished."""
        request = _get_inference_request(
            model_name=self.model, inputs=self._inputs[index], model_version="",
            request_id=str(seq), outputs=self._outputs, sequence_id=0, sequence_start=False, sequence_end=False,
            priority=0, timeout=None, parameters=None)
        # The aio client refuses this reserved parameter (the sync client's enable_empty_final_response sets it), so
        # the request goes through the client's own stub: without it Triton never says which response is the last.
        request.parameters["triton_enable_empty_final_response"].bool_param = True

        async def one_request() -> Any:
            yield request

        call = self._client._client_stub.ModelStreamInfer(one_request(), metadata=self._client._get_metadata(None),
                                                          timeout=self.timeout_s)
        try:
            async for response in call:
                if response.error_message:
                    return f"[server] {response.error_message}", ERR_SERVER
                try:
                    final = _take(InferResult(response.infer_response), collector)
                except (ValueError, TypeError) as exc:
                    return f"invalid response: {exc}", ERR_BAD_OUTPUT
                if final:
                    return None
        finally:
            call.cancel()  # no-op after a clean end; frees the stream after an early return
        if collector.finish_reason is not None:  # a server without the flag: the stream closed after the last piece
            return None
        return "the stream closed before the final response", ERR_BAD_OUTPUT

    async def aclose(self) -> None:
        client, self._client = self._client, None
        await close_quietly(client)


def build_generate_fn(config: LoadTestConfig, metadata: dict[str, Any] | None = None,
                      worker: int = 0) -> GenerateRequestFn:
    """The request function of `config` (generate mode), checked against the model's declared inputs and outputs
    (metadata None: the server would not give them, nothing is checked). Generator process `worker` starts at its
    own place in the plan (golden-ratio spread), so processes do not send the same prompts at the same moment (an
    LM server with a prefix cache would look faster than it is)."""
    if metadata is not None:
        inputs = {t["name"] for t in metadata.get("inputs", [])}
        outputs = {t["name"] for t in metadata.get("outputs", [])}
        if "TEXT" not in inputs or "TOKEN_IDS" not in outputs:
            raise ConfigError(f"model {config.model!r} has inputs {sorted(inputs)} and outputs {sorted(outputs)}, but "
                              "generate mode sends TEXT and reads streamed TOKEN_IDS; point --model at a decoupled "
                              "LM model, or use --mode text/tokens for an encoder")
        if config.max_tokens is not None and "MAX_TOKENS" not in inputs:
            raise ConfigError(f"model {config.model!r} takes no MAX_TOKENS input; drop --max-tokens (or give "
                              "--max-tokens none) to let the model decide the length")
    plan = request_plan(config.prompts, config.prompt_len, config.max_tokens)
    offset = int(len(plan) * ((worker * 0.6180339887) % 1.0))
    return GenerateRequestFn(config.channel(), config.model, plan, config.timeout_s, plan_offset=offset)


def _inputs(request: GenerateRequest) -> list[grpcclient.InferInput]:
    text = grpcclient.InferInput("TEXT", [1], "BYTES")
    text.set_data_from_numpy(np.array([request.prompt.encode("utf-8")], dtype=np.object_))
    inputs = [text]
    if request.max_tokens is not None:
        limit = grpcclient.InferInput("MAX_TOKENS", [1], "INT32")
        limit.set_data_from_numpy(np.array([request.max_tokens], dtype=np.int32))
        inputs.append(limit)
    return inputs


def _take(result: Any, collector: StreamCollector) -> bool:
    """Add one response to `collector`; True when it is the final one."""
    ids = result.as_numpy("TOKEN_IDS")
    text = result.as_numpy(TEXT_OUTPUT)
    piece = "".join(_str(v) for v in np.ravel(text)) if text is not None else ""
    collector.piece(int(np.size(ids)) if ids is not None else 0, piece)
    reason = result.as_numpy("FINISH_REASON")
    if reason is not None:
        collector.final(_str(np.ravel(reason)[0]), _int(result.as_numpy("PROMPT_TOKENS")),
                        _int(result.as_numpy("COMPLETION_TOKENS")))
    parameters = result.get_response().parameters
    return FINAL_FLAG in parameters and parameters[FINAL_FLAG].bool_param


def _str(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _int(array: np.ndarray | None) -> int | None:
    return int(np.ravel(array)[0]) if array is not None and np.size(array) else None


def _status(exc: BaseException) -> str | None:
    code = exc.code() if callable(getattr(exc, "code", None)) else None  # grpc.aio.AioRpcError
    status = getattr(code, "name", None) or grpc_errors.status_of(exc).rsplit(".", 1)[-1]
    return status or None


def _classify(exc: BaseException) -> str:
    status = _status(exc) or ""
    if status == "DEADLINE_EXCEEDED":
        return ERR_TIMEOUT
    if status == "UNAVAILABLE":
        return ERR_UNAVAILABLE
    return ERR_SERVER if status else ERR_CLIENT
