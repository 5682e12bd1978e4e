"""Streaming generation over gRPC: one request to a served LM (triton/lm_model.py), its pieces yielded as Triton
streams them. `EngineforgeClient.generate` is this.

Each call opens its own stream (a tritonclient client holds one stream at a time, so concurrent generations from one
EngineforgeClient need their own); readiness is checked first through the connection, so "no server" and "unknown
model" come back typed and retried like every other call. A caller that stops iterating (break, close, an exception)
cancels the stream: the server then stops decoding the sequence.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engineforge import grpc_errors
from engineforge.errors import InferenceRequestError, ServerError

from .client_connection import Connection, NotReadyYet
from .lm_requests import ENGINE_FAILED, INTERNAL_ERROR

_END = object()


@dataclass
class GeneratedPiece:
    """One streamed response: new text and its token ids; the last has finish_reason and the counts. `time_s` is
    when it arrived (time.perf_counter), `since_start_s` since the request was sent."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    time_s: float = 0.0
    since_start_s: float = 0.0


@dataclass
class GenerationResult:
    """A whole generation gathered from its pieces (`collect`)."""

    prompt: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None  # time to the first piece that holds a token
    total_s: float = 0.0

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed after the first token (as vLLM and TGI report it); None below two tokens."""
        if self.ttft_s is None or self.completion_tokens < 2 or self.total_s <= self.ttft_s:
            return None
        return (self.completion_tokens - 1) / (self.total_s - self.ttft_s)


def collect(prompt: str, pieces: Iterator[GeneratedPiece]) -> GenerationResult:
    result = GenerationResult(prompt)
    for piece in pieces:
        result.text += piece.text
        result.token_ids += piece.token_ids
        if piece.token_ids and result.ttft_s is None:
            result.ttft_s = piece.since_start_s
        result.total_s = piece.since_start_s
        if piece.finish_reason is not None:
            result.finish_reason = piece.finish_reason
            result.prompt_tokens = piece.prompt_tokens or 0
            result.completion_tokens = piece.completion_tokens or len(result.token_ids)
    return result


def generation_inputs(prompt: str | Sequence[int], *, max_tokens: int | None = None, temperature: float | None = None,
                      top_p: float | None = None, top_k: int | None = None, seed: int | None = None,
                      stop: Sequence[str] | str | None = None) -> dict[str, np.ndarray]:
    """The request's tensors (parameters left None are not sent: the server's defaults apply). A prompt given as
    token ids goes as INPUT_IDS."""
    if isinstance(prompt, str):
        inputs = {"TEXT": np.array([prompt.encode("utf-8")], dtype=object)}
    else:
        inputs = {"INPUT_IDS": np.asarray(list(prompt), dtype=np.int64)}
    scalars = (("MAX_TOKENS", max_tokens, np.int32), ("TEMPERATURE", temperature, np.float32),
               ("TOP_P", top_p, np.float32), ("TOP_K", top_k, np.int32), ("SEED", seed, np.int64))
    for name, value, dtype in scalars:
        if value is not None:
            inputs[name] = np.array([value], dtype=dtype)
    if stop:
        stops = [stop] if isinstance(stop, str) else list(stop)
        inputs["STOP"] = np.array([s.encode("utf-8") for s in stops], dtype=object)
    return inputs


_TRITON_DTYPES = {"object": "BYTES", "int32": "INT32", "int64": "INT64", "float32": "FP32"}


def stream_generate(connection: Connection, model: str, inputs: dict[str, np.ndarray],
                    stream_timeout_s: float | None = None) -> Iterator[GeneratedPiece]:
    """Send one generation request on its own gRPC stream and yield its pieces as they arrive; errors typed."""
    grpc = connection._grpc

    def ready(timeout: float) -> None:
        if not connection._client.is_model_ready(model, client_timeout=timeout):
            raise NotReadyYet(model)

    connection._call(ready, model)  # typed: no server, unknown model, not ready (retried like any call)
    tensors = []
    for name, array in inputs.items():
        tensor = grpc.InferInput(name, list(array.shape), _TRITON_DTYPES[array.dtype.name])
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    arrived: queue.Queue[Any] = queue.Queue()

    def on_response(result: Any, error: Any) -> None:  # tritonclient's stream thread
        arrived.put((time.perf_counter(), result, error))

    client = connection.channel.client()
    finished = False
    try:
        client.start_stream(on_response, stream_timeout=stream_timeout_s)
        started = time.perf_counter()
        client.async_stream_infer(model, tensors, enable_empty_final_response=True)
        while not finished:
            at, result, error = arrived.get()
            if error is not None:
                finished = True
                raise _stream_error(connection, model, error) from error
            piece, finished = _piece(result, at, started)
            if piece is not None:
                yield piece
    finally:
        # Stopped early (break, close, exception): cancel so the server stops decoding this sequence.
        try:
            client.stop_stream(cancel_requests=not finished)
        finally:
            client.close()


def _stream_error(connection: Connection, model: str, error: Exception) -> Exception:
    """A stream's error, typed: Triton sends a model's error over a stream as a message without its code, so the
    LM model's own failures are told apart by their words (lm_requests.ENGINE_FAILED); the rest is the request's."""
    message = grpc_errors.message_of(error)
    if not grpc_errors.status_of(error) and message.startswith((ENGINE_FAILED, INTERNAL_ERROR)):
        return ServerError(f"Triton at {connection.url} failed while running {model}: {message}")
    return connection._translate(error, model)


def _piece(result: Any, at: float, started: float) -> tuple[GeneratedPiece | None, bool]:
    """(the piece in a response or None for an empty final one, whether it is the final response)."""
    response = result.get_response()
    final = "triton_final_response" in response.parameters and response.parameters["triton_final_response"].bool_param
    text = result.as_numpy("TEXT_OUTPUT")
    if text is None:
        if not final:
            raise ServerError("the LM model sent a response without TEXT_OUTPUT; was it published by "
                              "publish_lm_bundle?")
        return None, True
    ids = result.as_numpy("TOKEN_IDS")
    reason = result.as_numpy("FINISH_REASON")
    prompt_tokens, completion_tokens = result.as_numpy("PROMPT_TOKENS"), result.as_numpy("COMPLETION_TOKENS")
    piece = GeneratedPiece(
        text=text.reshape(-1)[0].decode("utf-8"),
        token_ids=[] if ids is None else [int(t) for t in ids.reshape(-1)],
        finish_reason=None if reason is None else reason.reshape(-1)[0].decode(),
        prompt_tokens=None if prompt_tokens is None else int(prompt_tokens.reshape(-1)[0]),
        completion_tokens=None if completion_tokens is None else int(completion_tokens.reshape(-1)[0]),
        time_s=at, since_start_s=at - started)
    return piece, final or piece.finish_reason is not None


def check_generation_args(prompt: Any) -> None:
    if isinstance(prompt, str):
        if not prompt:
            raise InferenceRequestError("the prompt is empty; give some text to continue")
        return
    try:
        ids = [int(t) for t in prompt]
    except (TypeError, ValueError) as exc:
        raise InferenceRequestError("the prompt must be a string or a sequence of token ids") from exc
    if not ids:
        raise InferenceRequestError("the prompt has no token ids")


__all__ = ["GeneratedPiece", "GenerationResult", "collect", "generation_inputs", "stream_generate"]
