"""Triton python-backend model for a published LM (lm_publish.py): a decoupled model that streams each request's
tokens as they are decoded.

Copied verbatim as `model.py` into each published version directory, next to `lm_engine.json`, `model/` and
`tokenizer/` (the version directory is an LM bundle). `initialize` opens it with `open_lm_bundle` (any registered
LM runtime) and starts one `Scheduler`: its thread steps the engine for every active request together (continuous
batching). `execute` only parses and submits, then returns at once (decoupled), so the backend never serializes
requests: a request joins the running batch at the next step. Each piece goes to its request's response sender from
the scheduler's thread; the last carries FINISH_REASON, the counts and the COMPLETE_FINAL flag.

A request in Triton's LLM layout (text_input + sampling_parameters: lm_compat.py, what GenAI-Perf sends) is
translated first; its pieces come back as text_output, held into one response when it asked for stream false.

A client that cancels its stream or goes away is noticed at its next piece (`is_cancelled`): its sequence is
cancelled in the engine, which frees it at the next step, and the final flag is sent.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils

try:
    from engineforge.lm.bundle import open_lm_bundle
    from engineforge.lm.engine import CANCELLED, ERROR, InvalidGenerationRequest
    from engineforge.lm.generation import Piece, Scheduler
    from engineforge.serve import lm_compat
    from engineforge.serve.lm_publish import LM_HASH_KEYS
    from engineforge.serve.lm_requests import (
        ENGINE_FAILED,
        INPUTS,
        INTERNAL_ERROR,
        LMLimits,
        parse_request,
        piece_arrays,
    )
    from engineforge.serve.published import verify_published_files
except ImportError as exc:  # the stub runs the python found on PATH; it must have engineforge
    raise ImportError(
        "engineforge is not importable by the Triton python backend stub; start the server with "
        "`engineforge serve` (which puts the engineforge virtualenv first on PATH)"
    ) from exc

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# Asking Triton whether a request was cancelled is a round trip to the server process: at most this often per stream
# (a cancelled sequence then decodes at most this long more), not once per token.
CANCEL_CHECK_S = 0.02


def _error(message: str, code: int) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def _response(piece: Piece, text: str, token_ids: list[int], text_name: str) -> pb_utils.InferenceResponse:
    arrays = piece_arrays(text, token_ids, piece.finish_reason, piece.prompt_tokens, piece.completion_tokens,
                          text_name)
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, a) for n, a in arrays.items()])


def _cancelled(request, sender) -> bool:
    """Whether the client cancelled the request or went away (Triton >= 2.40 python backends have both checks)."""
    for source in (sender, request):
        check = getattr(source, "is_cancelled", None)
        if check is not None:
            try:
                if check():
                    return True
            except Exception:  # the request is gone from the server: nobody is listening
                return True
    return False


class _Stream:
    """One request's stream: the scheduler's callback sends each piece; a cancelled client cancels the sequence."""

    def __init__(self, model: TritonPythonModel, request, sender, layout: lm_compat.ResponseLayout) -> None:
        self.model, self.request, self.sender, self.layout = model, request, sender, layout
        # Text and ids not sent yet: the prompt when the client wants it echoed; everything when it asked for one
        # response (stream false in Triton's LLM layout).
        self.held_text, self.held_ids = layout.prefix, []
        self.handle: list[int] | None = None
        self.cancelling = False
        self.checked_at = 0.0
        self.lock = threading.Lock()  # the callback may run before submit() has returned the handle

    def start(self, prompt_ids: list[int], params) -> None:
        handle = self.model.scheduler.submit(prompt_ids, params, self.on_piece)
        with self.lock:
            self.handle = handle
            if self.cancelling:
                self.model.scheduler.cancel(handle)

    def cancel(self) -> None:
        with self.lock:
            if not self.cancelling:
                self.cancelling = True
                if self.handle is not None:
                    self.model.scheduler.cancel(self.handle)

    def on_piece(self, piece: Piece) -> None:
        final = piece.finish_reason is not None
        if not final:
            if self.cancelling:
                return  # the CANCELLED piece follows at the next step and sends the final flag
            now = time.monotonic()
            if now - self.checked_at >= CANCEL_CHECK_S:
                self.checked_at = now
                if _cancelled(self.request, self.sender):
                    self.cancel()
                    return
        if piece.finish_reason == ERROR:  # the engine failed: a typed server error, not its message as text
            response = _error(f"{ENGINE_FAILED}: {piece.text or 'no reason given'}", pb_utils.TritonError.INTERNAL)
        else:
            text, ids = self.held_text + piece.text, self.held_ids + list(piece.token_ids)
            if not final and not self.layout.stream:
                self.held_text, self.held_ids = text, ids
                return
            self.held_text, self.held_ids = "", []
            response = _response(piece, text, ids, self.layout.text_name)
        try:
            self.sender.send(response, flags=FINAL if final else 0)
        except Exception:  # the client went away: stop decoding for it
            if not final:
                self.cancel()
        if final:
            self.model.finished(self, piece)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise ValueError("this LM model streams tokens: its config.pbtxt needs model_transaction_policy "
                             "{ decoupled: true }; republish it with publish_lm_bundle")
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.limits = LMLimits.from_parameters(config.get("parameters") or {})
        # A model or tokenizer changed after publishing never loads.
        verify_published_files(version_dir, {LM_HASH_KEYS["model"]: "model", LM_HASH_KEYS["tokenizer"]: "tokenizer"})
        self.spec, engine, self.tokenizer = open_lm_bundle(version_dir, max_batch=self.limits.max_sequences)
        self.scheduler = Scheduler(engine, self.tokenizer)
        self.logger = pb_utils.Logger
        self.streams: set[_Stream] = set()
        self.streams_lock = threading.Lock()

    def _arrays(self, request) -> dict:
        arrays = {}
        for name in (*INPUTS, *lm_compat.INPUTS):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                arrays[name] = tensor.as_numpy()
        return arrays

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                arrays, layout = lm_compat.translate(self._arrays(request))
                prompt_ids, params = parse_request(arrays, self.limits, self.tokenizer)
                stream = _Stream(self, request, sender, layout)
                with self.streams_lock:
                    self.streams.add(stream)
                try:
                    stream.start(prompt_ids, params)  # the engine's own checks (positions) raise here
                except BaseException:
                    with self.streams_lock:
                        self.streams.discard(stream)
                    raise
            except InvalidGenerationRequest as exc:
                sender.send(_error(str(exc), pb_utils.TritonError.INVALID_ARG), flags=FINAL)
            except Exception as exc:  # never crash the stub: the request gets the reason instead
                sender.send(_error(f"{INTERNAL_ERROR}: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL),
                            flags=FINAL)
        return None  # decoupled: responses go through each request's sender

    def finished(self, stream: _Stream, piece: Piece) -> None:
        with self.streams_lock:
            self.streams.discard(stream)
        if piece.finish_reason == CANCELLED:  # operators (and tests) see that the engine freed the sequence
            self.logger.log_info(f"lm: request cancelled by its client after {piece.completion_tokens} generated "
                                 f"tokens; sequence freed, {self.scheduler.active} active")

    def finalize(self) -> None:
        self.scheduler.close()  # cancels what is left: each stream gets its final (cancelled) piece
