"""The request function a load test sends with: payload tensors built once for the model's mode (raw text to the
ensemble, or token ids to the engine alone), checked first against the model's declared inputs, outputs, maximum
length and label names (its metadata, from loadtest/server_check.py). The requests themselves are
loadtest/triton_requests.py; every connection is opened by `GrpcChannel`, TLS included."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient

from engineforge.defaults import DEFAULT_GRPC_URL
from engineforge.errors import ConfigError
from engineforge.grpc_channel import ClientTls, GrpcChannel

from . import payloads
from .config import DEFAULT_TIMEOUT_S, LoadTestConfig
from .lengths import parse_lengths
from .output_checks import (
    check_embedding_outputs,
    check_entity_outputs,
    check_logits_outputs,
    check_tag_outputs,
    check_text_outputs,
)
from .triton_requests import TritonRequestFn


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
    batches = [[_input("TEXT", arr, "BYTES")] for arr in payloads.text_batches(list(texts), batch_size)]
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
        batches.append([_input(name, arr, "INT64") for name, arr in tensors.items()])
    if embedding:
        return TritonRequestFn(channel, model, batches, ("EMBEDDING",), check_embedding_outputs, batch_size, timeout_s)
    if entities:
        return TritonRequestFn(channel, model, batches, ("TOKEN_LABELS",), check_tag_outputs, batch_size, timeout_s)
    return TritonRequestFn(channel, model, batches, ("LOGITS",), check_logits_outputs, batch_size, timeout_s)


def _input(name: str, arr: np.ndarray, datatype: str) -> grpcclient.InferInput:
    """One payload tensor, filled once: the timed loop only sends it."""
    inp = grpcclient.InferInput(name, list(arr.shape), datatype)
    inp.set_data_from_numpy(arr)
    return inp


def build_request_fn(config: LoadTestConfig, metadata: dict[str, Any] | None = None,
                     worker: int = 0) -> TritonRequestFn:
    """The request function for `config.mode`, checked against the model's declared inputs (metadata None: the
    server would not give them, nothing is checked). `worker`: the generator process it is built in."""
    if config.mode == "text":
        return _text_requests(config, metadata)
    if config.mode == "generate":
        from .generate_requests import build_generate_fn

        return build_generate_fn(config, metadata, worker)  # type: ignore[return-value]  (the same RequestFn contract)
    return _token_requests(config, metadata)


def _declared(metadata: dict[str, Any] | None, kind: str) -> set[str]:
    return {tensor["name"] for tensor in (metadata or {}).get(kind, [])}


def _parameters(metadata: dict[str, Any] | None) -> dict[str, Any]:
    return (metadata or {}).get("parameters", {})


def _text_requests(config: LoadTestConfig, metadata: dict[str, Any] | None) -> TritonRequestFn:
    inputs, outputs = _declared(metadata, "inputs"), _declared(metadata, "outputs")
    embedding, entities = "EMBEDDING" in outputs, "ENTITIES" in outputs
    if metadata is not None and "TEXT" not in inputs:
        raise ConfigError(
            f"model {config.model!r} has inputs {sorted(inputs)}, but text mode sends TEXT; "
            "point --model at the ensemble, or use --mode tokens for an engine model"
        )
    labels = expected_labels(config, metadata, embedding or entities) if config.labels else None
    return text_request_fn(
        config.model, config.texts, url=config.url, tls=config.tls, batch_size=config.batch_size,
        timeout_s=config.timeout_s, embedding=embedding, entities=entities, labels=labels,
    )


def _token_requests(config: LoadTestConfig, metadata: dict[str, Any] | None) -> TritonRequestFn:
    inputs, outputs = _declared(metadata, "inputs"), _declared(metadata, "outputs")
    if metadata is not None and not {"INPUT_IDS", "ATTENTION_MASK"} <= inputs:
        raise ConfigError(
            f"model {config.model!r} has inputs {sorted(inputs)}, but tokens mode sends "
            "INPUT_IDS and ATTENTION_MASK; point --model at the engine, or use --mode text for the ensemble"
        )
    max_length = _parameters(metadata).get("max_sequence_length")
    longest = parse_lengths(config.seq_len).max_length
    if max_length and longest > int(max_length):
        raise ConfigError(f"--seq-len {config.seq_len} reaches {longest} tokens, but model {config.model!r} takes at "
                          f"most {max_length}; give lengths up to {max_length}")
    token_type_ids = config.token_type_ids
    if token_type_ids is None:  # auto: send it exactly when the model declares it
        token_type_ids = "TOKEN_TYPE_IDS" in inputs if metadata is not None else True
    vocab = _parameters(metadata).get("vocab_size")
    return token_request_fn(
        config.model,
        url=config.url,
        tls=config.tls,
        seq_len=config.seq_len,
        batch_size=config.batch_size,
        timeout_s=config.timeout_s,
        token_type_ids=token_type_ids,
        embedding="EMBEDDING" in outputs,
        vocab_size=int(vocab) if vocab else None,
        entities="ENTITIES" in outputs,
    )


def expected_labels(config: LoadTestConfig, metadata: dict[str, Any] | None, not_classifier: bool) -> list[str]:
    """The texts' expected labels, checked against the model's own label names (ids are mapped to names)."""
    if not_classifier:
        raise ConfigError(f"model {config.model!r} is not a text classifier (it answers embeddings or entities); "
                          "expected labels can only be checked against a classifier's LABEL output: drop the 'label' "
                          "column from the texts file")
    names = json.loads(_parameters(metadata).get("labels") or "[]")
    labels = list(config.labels)
    if names:
        labels = [names[int(v)] if v.isdigit() and v not in names and int(v) < len(names) else v for v in labels]
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise ConfigError(f"expected labels {unknown[:5]} are not labels of model {config.model!r} "
                              f"(its labels: {', '.join(names)}); fix the texts file's 'label' column")
    return labels
