"""Request functions for Triton over gRPC (KServe v2), using the asyncio client.

Each factory returns a `TritonRequestFn`: `await fn(seq)` sends one (possibly batched) request
and returns a `RequestResult`; it never raises. Payload tensors are built once up front and
re-used (the client only reads them), so the timed loop does no numpy work on the client.
Connections are opened by `grpc_security.GrpcChannel` (TLS, message sizes, keepalive), as everywhere else.

A request that meets its model reloading (Triton: "has no available versions") is retried within its deadline,
as EngineforgeClient does: users of a served model wait through a reload, so the wait goes into the latency and
the record counts the retries; a reload that outlasts the deadline is a `model_reloading` error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from engineforge import grpc_errors
from engineforge.defaults import DEFAULT_GRPC_URL
from engineforge.errors import ConfigError
from engineforge.grpc_channel import ClientTls, GrpcChannel

from . import payloads
from .config import DEFAULT_TIMEOUT_S, LoadTestConfig
from .output_checks import (
    check_embedding_outputs,
    check_entity_outputs,
    check_logits_outputs,
    check_tag_outputs,
    check_text_outputs,
    count_correct,
)
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
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.close()
            except Exception:  # closing a broken channel must not hide the run's results
                pass


class _Failed(Exception):
    def __init__(self, exc: InferenceServerException, retries: int) -> None:
        super().__init__(str(exc))
        self.exc, self.retries = exc, retries


def text_request_fn(
    model: str,
    texts: Sequence[str] = payloads.DEFAULT_TEXTS,
    *,
    url: str = DEFAULT_GRPC_URL,
    tls: ClientTls | None = None,
    batch_size: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    embedding: bool = False,
    entities: bool = False,
    labels: Sequence[str] | None = None,
) -> TritonRequestFn:
    """Raw text to the ensemble: TEXT (BYTES [batch, 1]) -> LABEL (BYTES), PROBABILITIES (FP32), or EMBEDDING
    (FP32 [batch, dim]) for an embedding model, or ENTITIES (BYTES JSON per text) for a token classifier.
    `labels` (one per text, classifiers only): each answer's LABEL is checked against it."""
    channel = GrpcChannel(url, tls)
    batches = []
    for arr in payloads.text_batches(list(texts), batch_size):
        inp = grpcclient.InferInput("TEXT", list(arr.shape), "BYTES")
        inp.set_data_from_numpy(arr)
        batches.append([inp])
    if embedding:
        return TritonRequestFn(channel, model, batches, ("EMBEDDING",), check_embedding_outputs, batch_size, timeout_s)
    if entities:
        return TritonRequestFn(channel, model, batches, ("ENTITIES",), check_entity_outputs, batch_size, timeout_s)
    expected = payloads.label_batches(list(labels), batch_size) if labels is not None else None
    return TritonRequestFn(channel, model, batches, ("LABEL", "PROBABILITIES"), check_text_outputs, batch_size,
                           timeout_s, expected=expected)


def token_request_fn(
    model: str,
    *,
    url: str = DEFAULT_GRPC_URL,
    tls: ClientTls | None = None,
    seq_len: int | str = 128,
    batch_size: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    token_type_ids: bool = True,
    seed: int = 0,
    embedding: bool = False,
    vocab_size: int | None = None,
    entities: bool = False,
) -> TritonRequestFn:
    """Token ids straight to the engine (no tokenizer): INPUT_IDS, ATTENTION_MASK[, TOKEN_TYPE_IDS]
    (INT64 [batch, length]) -> LOGITS (FP32 [batch, n_labels]). Measures the engine alone. `seq_len`: a length
    or a distribution (loadtest/lengths.py)."""
    channel = GrpcChannel(url, tls)
    batches = []
    for ids, mask in payloads.token_batches(batch_size, seq_len, seed=seed, vocab_size=vocab_size):
        tensors = {"INPUT_IDS": ids, "ATTENTION_MASK": mask}
        if token_type_ids:
            tensors["TOKEN_TYPE_IDS"] = np.zeros_like(ids)
        inputs = []
        for name, arr in tensors.items():
            inp = grpcclient.InferInput(name, list(arr.shape), "INT64")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        batches.append(inputs)
    if embedding:
        return TritonRequestFn(channel, model, batches, ("EMBEDDING",), check_embedding_outputs, batch_size, timeout_s)
    if entities:
        return TritonRequestFn(channel, model, batches, ("TOKEN_LABELS",), check_tag_outputs, batch_size, timeout_s)
    return TritonRequestFn(channel, model, batches, ("LOGITS",), check_logits_outputs, batch_size, timeout_s)


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


def build_request_fn(config: LoadTestConfig, metadata: dict[str, Any] | None = None) -> TritonRequestFn:
    """The request function for `config.mode`, checked against the model's declared inputs."""
    inputs = {i["name"] for i in (metadata or {}).get("inputs", [])}
    outputs = {o["name"] for o in (metadata or {}).get("outputs", [])}
    embedding, entities = "EMBEDDING" in outputs, "ENTITIES" in outputs
    vocab = (metadata or {}).get("parameters", {}).get("vocab_size")
    if config.mode == "text":
        if metadata is not None and "TEXT" not in inputs:
            raise ConfigError(
                f"model {config.model!r} has inputs {sorted(inputs)}, but text mode sends TEXT; "
                "point --model at the ensemble, or use --mode tokens for an engine model"
            )
        labels = config.labels or None
        if labels is not None:
            labels = expected_labels(config, metadata, embedding or entities)
        return text_request_fn(
            config.model, config.texts, url=config.url, tls=config.tls, batch_size=config.batch_size,
            timeout_s=config.timeout_s, embedding=embedding, entities=entities, labels=labels,
        )
    needed = {"INPUT_IDS", "ATTENTION_MASK"}
    if metadata is not None and not needed <= inputs:
        raise ConfigError(
            f"model {config.model!r} has inputs {sorted(inputs)}, but tokens mode sends "
            "INPUT_IDS and ATTENTION_MASK; point --model at the engine, or use --mode text for the ensemble"
        )
    max_length = (metadata or {}).get("parameters", {}).get("max_sequence_length")
    from .lengths import parse_lengths

    longest = parse_lengths(config.seq_len).max_length
    if max_length and longest > int(max_length):
        raise ConfigError(f"--seq-len {config.seq_len} reaches {longest} tokens, but model {config.model!r} takes at "
                          f"most {max_length}; give lengths up to {max_length}")
    token_type_ids = config.token_type_ids
    if token_type_ids is None:  # auto: send it exactly when the model declares it
        token_type_ids = "TOKEN_TYPE_IDS" in inputs if metadata is not None else True
    return token_request_fn(
        config.model,
        url=config.url,
        tls=config.tls,
        seq_len=config.seq_len,
        batch_size=config.batch_size,
        timeout_s=config.timeout_s,
        token_type_ids=token_type_ids,
        embedding=embedding,
        vocab_size=int(vocab) if vocab else None,
        entities=entities,
    )


def expected_labels(config: LoadTestConfig, metadata: dict[str, Any] | None, not_classifier: bool) -> list[str]:
    """The texts' expected labels, checked against the model's own label names (ids are mapped to names)."""
    if not_classifier:
        raise ConfigError(f"model {config.model!r} is not a text classifier (it answers embeddings or entities); "
                          "expected labels can only be checked against a classifier's LABEL output: drop the 'label' "
                          "column from the texts file")
    names = json.loads((metadata or {}).get("parameters", {}).get("labels") or "[]")
    labels = list(config.labels)
    if names:
        labels = [names[int(v)] if v.isdigit() and v not in names and int(v) < len(names) else v for v in labels]
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise ConfigError(f"expected labels {unknown[:5]} are not labels of model {config.model!r} "
                              f"(its labels: {', '.join(names)}); fix the texts file's 'label' column")
    return labels
