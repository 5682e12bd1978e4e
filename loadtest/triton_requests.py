"""Request functions for Triton over gRPC (KServe v2), using the asyncio client.

Each factory returns a `TritonRequestFn`: `await fn(seq)` sends one (possibly batched) request
and returns a `RequestResult`; it never raises. Payload tensors are built once up front and
re-used (the client only reads them), so the timed loop does no numpy work on the client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from engineforge.defaults import DEFAULT_GRPC_URL
from engineforge.errors import ConfigError, ModelNotReadyError, ServerUnavailableError
from engineforge.serve import grpc_errors

from . import payloads
from .config import DEFAULT_TIMEOUT_S, LoadTestConfig
from .records import (
    ERR_BAD_OUTPUT,
    ERR_CLIENT,
    ERR_SERVER,
    ERR_TIMEOUT,
    ERR_UNAVAILABLE,
    RequestResult,
    clock,
    failure,
)

# Turns the decoded outputs (name -> array) into a short summary, or raises ValueError if they
# do not look like a valid answer for `batch_size` items.
OutputCheck = Callable[[dict[str, np.ndarray], int], str]


class TritonRequestFn:
    """One inference per call against `model` at `url`; see module docstring.

    The gRPC channel is created lazily on the first call so that it binds to the running event
    loop (grpc.aio channels cannot move between loops). Call `aclose()` when done.
    """

    def __init__(
        self,
        url: str,
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
        self.url, self.model, self.batch_size, self.timeout_s = url, model, batch_size, timeout_s
        self._batches = list(batches)
        self._outputs = [grpcclient.InferRequestedOutput(name) for name in output_names]
        self._output_names = tuple(output_names)
        self._check = check
        self._client: grpcclient.InferenceServerClient | None = None

    async def __call__(self, seq: int) -> RequestResult:
        start = clock()
        try:
            if self._client is None:
                self._client = grpcclient.InferenceServerClient(self.url)
            result = await self._client.infer(
                self.model,
                self._batches[seq % len(self._batches)],
                outputs=self._outputs,
                request_id=str(seq),
                client_timeout=self.timeout_s,
            )
            latency = clock() - start
        except asyncio.CancelledError:
            raise  # the runner cancels stragglers at the end of a run; let it
        except InferenceServerException as exc:
            return failure(start, grpc_errors.describe(exc), classify_error(exc), self.batch_size,
                           status=status_name(exc))
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
                             correct=correct)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.close()
            except Exception:  # closing a broken channel must not hide the run's results
                pass


def text_request_fn(
    model: str,
    texts: Sequence[str] = payloads.DEFAULT_TEXTS,
    *,
    url: str = DEFAULT_GRPC_URL,
    batch_size: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    embedding: bool = False,
    entities: bool = False,
    labels: Sequence[str] | None = None,
) -> TritonRequestFn:
    """Raw text to the ensemble: TEXT (BYTES [batch, 1]) -> LABEL (BYTES), PROBABILITIES (FP32), or EMBEDDING
    (FP32 [batch, dim]) for an embedding model, or ENTITIES (BYTES JSON per text) for a token classifier.
    `labels` (one per text, classifiers only): each answer's LABEL is checked against it."""
    batches = []
    for arr in payloads.text_batches(list(texts), batch_size):
        inp = grpcclient.InferInput("TEXT", list(arr.shape), "BYTES")
        inp.set_data_from_numpy(arr)
        batches.append([inp])
    if embedding:
        return TritonRequestFn(url, model, batches, ("EMBEDDING",), check_embedding_outputs, batch_size, timeout_s)
    if entities:
        return TritonRequestFn(url, model, batches, ("ENTITIES",), check_entity_outputs, batch_size, timeout_s)
    expected = payloads.label_batches(list(labels), batch_size) if labels is not None else None
    return TritonRequestFn(url, model, batches, ("LABEL", "PROBABILITIES"), check_text_outputs, batch_size, timeout_s,
                           expected=expected)


def token_request_fn(
    model: str,
    *,
    url: str = DEFAULT_GRPC_URL,
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
        return TritonRequestFn(url, model, batches, ("EMBEDDING",), check_embedding_outputs, batch_size, timeout_s)
    if entities:
        return TritonRequestFn(url, model, batches, ("TOKEN_LABELS",), check_tag_outputs, batch_size, timeout_s)
    return TritonRequestFn(url, model, batches, ("LOGITS",), check_logits_outputs, batch_size, timeout_s)


def count_correct(labels: np.ndarray, expected: tuple[str, ...]) -> int:
    """How many of the batch's predicted labels (BYTES) equal the expected ones."""
    predicted = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in labels.reshape(-1)]
    return sum(p == e for p, e in zip(predicted, expected, strict=False))


def check_text_outputs(arrays: dict[str, np.ndarray], batch_size: int) -> str:
    labels, probs = arrays["LABEL"], arrays["PROBABILITIES"]
    _expect_rows("LABEL", labels, batch_size)
    _expect_rows("PROBABILITIES", probs, batch_size)
    first = labels.reshape(-1)[0]
    return first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)


def check_logits_outputs(arrays: dict[str, np.ndarray], batch_size: int) -> str:
    logits = arrays["LOGITS"]
    _expect_rows("LOGITS", logits, batch_size)
    return str(int(np.argmax(logits.reshape(batch_size, -1)[0])))


def check_entity_outputs(arrays: dict[str, np.ndarray], batch_size: int) -> str:
    rows = arrays["ENTITIES"]
    _expect_rows("ENTITIES", rows, batch_size)
    first = json.loads(rows.reshape(-1)[0])
    if not isinstance(first, dict) or "simple" not in first:
        raise ValueError("ENTITIES is not a JSON object of entity lists per strategy")
    return f"{len(first['simple'])} entities"


def check_tag_outputs(arrays: dict[str, np.ndarray], batch_size: int) -> str:
    rows = arrays["TOKEN_LABELS"]
    _expect_rows("TOKEN_LABELS", rows, batch_size)
    return f"{len(json.loads(rows.reshape(-1)[0]))} tags"


def check_embedding_outputs(arrays: dict[str, np.ndarray], batch_size: int) -> str:
    embeddings = arrays["EMBEDDING"]
    _expect_rows("EMBEDDING", embeddings, batch_size)
    if not np.isfinite(embeddings).all():
        raise ValueError("EMBEDDING holds non-finite values")
    return f"dim {embeddings.shape[-1]}"


def _expect_rows(name: str, arr: np.ndarray, batch_size: int) -> None:
    # An empty or short output is how a numpy/ABI mismatch in the python backend shows up.
    if arr.ndim == 0 or arr.shape[0] != batch_size or arr.size == 0:
        raise ValueError(f"{name} has shape {list(arr.shape)}, expected {batch_size} row(s)")


def status_name(exc: InferenceServerException) -> str:
    """The gRPC status code of a failed call, e.g. "INVALID_ARGUMENT" (tritonclient gives "StatusCode.X")."""
    status = exc.status()
    return str(status).rsplit(".", 1)[-1] if status else "UNKNOWN"


def classify_error(exc: InferenceServerException) -> str:
    kind = grpc_errors.kind_of(exc)
    return {grpc_errors.TIMEOUT: ERR_TIMEOUT, grpc_errors.UNAVAILABLE: ERR_UNAVAILABLE}.get(kind, ERR_SERVER)


async def check_server(url: str, model: str, *, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """Fail early and clearly if nobody serves `model` at `url`; return the model's metadata
    (KServe v2 JSON: name, inputs, outputs), or None if the server would not give it.

    Raises ServerUnavailableError when no server answers, ModelNotReadyError (listing the models
    that are ready) when the server is up but `model` is missing or not ready.
    """
    async with grpcclient.InferenceServerClient(url) as client:
        try:
            live = await client.is_server_live(client_timeout=timeout_s)
        except InferenceServerException as exc:
            raise grpc_errors.unavailable(url, grpc_errors.describe(exc)) from None
        if not live:
            raise ServerUnavailableError(f"the Triton server at {url} reports it is not live")
        try:
            ready = await client.is_model_ready(model, client_timeout=timeout_s)
        except InferenceServerException:
            ready = False
        if not ready:
            raise ModelNotReadyError(await _not_ready_message(client, url, model, timeout_s))
        try:
            metadata = await client.get_model_metadata(model, as_json=True, client_timeout=timeout_s)
            config = await client.get_model_config(model, as_json=True, client_timeout=timeout_s)
            server = await client.get_server_metadata(as_json=True, client_timeout=timeout_s)
        except InferenceServerException:  # only used to check inputs and for the report; the load test can go on
            return None
        parameters = config.get("config", {}).get("parameters", {})
        return metadata | {"parameters": {k: v.get("string_value", "") for k, v in parameters.items()},
                           "server": {"name": server.get("name"), "version": server.get("version")}}


async def _not_ready_message(client: grpcclient.InferenceServerClient, url: str, model: str, timeout_s: float) -> str:
    try:
        index = await client.get_model_repository_index(as_json=True, client_timeout=timeout_s)
        entries = index.get("models", [])
    except InferenceServerException:
        entries = []
    ready = sorted({m["name"] for m in entries if m.get("state") == "READY"})
    own = [m for m in entries if m.get("name") == model]
    if own:
        state = own[0].get("state", "UNKNOWN")
        reason = own[0].get("reason")
        why = f"is in state {state}" + (f" ({reason})" if reason else "")
    else:
        why = "is not in the server's model repository"
    listing = ", ".join(ready) if ready else "none"
    return f"model {model!r} {why} on the Triton server at {url}; ready models: {listing}"


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
            config.model, config.texts, url=config.url, batch_size=config.batch_size, timeout_s=config.timeout_s,
            embedding=embedding, entities=entities, labels=labels,
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
