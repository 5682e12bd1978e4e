"""Engine inference logic, independent of Triton so it can be unit-tested in-process.

The python-backend model (`triton/engine_model.py`) only converts Triton tensors to numpy and back;
validation, batching of a dynamic batch into one engine call, and post-processing live here; the
runtimes themselves (ONNX Runtime, OpenVINO, torch-bnb) are opened through `engineforge.engines`, the
same layer the build validates and times engines with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engineforge.engines import TOKEN_INPUTS, Engine, load_engine
from engineforge.engines.engine_spec import EngineSpec
from engineforge.engines.request_limits import RequestLimitError, check_token_request
from engineforge.errors import EngineLoadError

PAD_ID = 0


class InvalidRequestError(ValueError):
    """One request's tensors are unusable; the message is sent back to that request's client."""


class VersionMixError(InvalidRequestError):
    """Token ids made by another published version's tokenizer: answering would mix versions, so the request fails
    (INTERNAL: the server's fault, not the client's)."""


def check_same_version(tokenizer_versions: object, engine_version: str) -> None:
    """Raise VersionMixError unless every row's TOKENIZER_VERSION is this engine's version."""
    found = {v.decode("utf-8", "replace") if isinstance(v, bytes | np.bytes_) else str(v)
             for v in np.asarray(tokenizer_versions, dtype=object).reshape(-1)}
    if found != {engine_version}:
        raise VersionMixError(f"token ids from tokenizer version(s) {sorted(found)} reached engine version "
                              f"{engine_version}; refusing to answer with a mix of versions (retry: a version switch "
                              "was under way)")


@dataclass(frozen=True)
class RequestArrays:
    """One validated request: int64 arrays of shape [batch, seq]."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray | None = None

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class ClassifiedRows:
    """Outputs for one request, rows in request order."""

    logits: np.ndarray
    probabilities: np.ndarray
    labels: tuple[str, ...]


@dataclass(frozen=True)
class EmbeddedRows:
    """Embeddings for one request, [batch, embedding_dim], rows in request order."""

    embeddings: np.ndarray


def _as_int_matrix(name: str, value: object) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iu":
        raise InvalidRequestError(f"{name} must hold integers (INT64), got dtype {array.dtype}")
    if array.ndim != 2:
        # Triton keeps 32 bits of the batch dimension and reads 0 as "no batch": [2^32, n] arrives as [n].
        hint = " (a batch dimension of 0 or a multiple of 2^32 arrives as none)" if array.ndim == 1 else ""
        raise InvalidRequestError(f"{name} must have rank 2 [batch, sequence], got shape {list(array.shape)}"
                                  + hint)
    return array.astype(np.int64, copy=False)


def _check_range(name: str, array: np.ndarray, upper: int | None, bound: str) -> None:
    """Refuse values < 0 or >= `upper` (None: unbounded), naming the first one and where it is."""
    outside = array < 0 if upper is None else (array < 0) | (array >= upper)
    if outside.any():
        row, col = (int(i) for i in np.argwhere(outside)[0])
        value = int(array[row, col])
        rule = "be >= 0" if upper is None else bound
        raise InvalidRequestError(f"{name} must {rule}; got {value} at row {row}, position {col}")


def validate_request_arrays(
    input_ids: object,
    attention_mask: object,
    token_type_ids: object | None = None,
    *,
    max_positions: int,
    vocab_size: int | None = None,
    type_vocab_size: int | None = None,
    takes_token_types: bool = True,
    max_tokens_per_request: int | None = None,
) -> RequestArrays:
    """Check one request before it joins a batch; raises InvalidRequestError saying what to fix.

    token_type_ids must be in [0, type_vocab_size); an engine that takes none (`takes_token_types` False) would
    silently ignore them, so there only 0 is accepted. `max_tokens_per_request` bounds rows x tokens."""
    ids = _as_int_matrix("input_ids", input_ids)
    mask = _as_int_matrix("attention_mask", attention_mask)
    batch, seq = ids.shape
    if batch == 0:
        raise InvalidRequestError("the request holds no sequences (batch size 0)")
    if seq == 0:
        raise InvalidRequestError("empty sequence: input_ids has length 0; send at least one token")
    if seq > max_positions:
        raise InvalidRequestError(
            f"sequence length {seq} exceeds the engine's limit of {max_positions} tokens; "
            f"truncate inputs to at most {max_positions} tokens"
        )
    if max_tokens_per_request is not None:
        try:
            check_token_request(max_tokens_per_request, batch, seq)
        except RequestLimitError as exc:
            raise InvalidRequestError(str(exc)) from exc
    if mask.shape != ids.shape:
        raise InvalidRequestError(
            f"attention_mask shape {list(mask.shape)} differs from input_ids shape {list(ids.shape)}"
        )
    if not np.isin(mask, (0, 1)).all():
        raise InvalidRequestError("attention_mask must contain only 0 and 1")
    empty_rows = np.flatnonzero(mask.sum(axis=1) == 0)
    if empty_rows.size:
        raise InvalidRequestError(
            f"empty sequence: row(s) {empty_rows.tolist()} have no attended tokens (attention_mask all 0)"
        )
    _check_range("input_ids", ids, vocab_size, f"be in [0, {vocab_size}) (the vocabulary's size)")
    types = None
    if token_type_ids is not None:
        types = _as_int_matrix("token_type_ids", token_type_ids)
        if types.shape != ids.shape:
            raise InvalidRequestError(
                f"token_type_ids shape {list(types.shape)} differs from input_ids shape {list(ids.shape)}"
            )
        kinds = type_vocab_size if takes_token_types else 1
        if kinds == 1:
            why = "type_vocab_size 1" if takes_token_types else "its engine takes no token_type_ids"
            bound = f"be 0: this model has no token types ({why})"
        else:
            bound = f"be in [0, {kinds}) (type_vocab_size {kinds})"
        _check_range("token_type_ids", types, kinds, bound)
    return RequestArrays(ids, mask, types)


def merge_requests(requests: Sequence[RequestArrays]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Stack the requests of a dynamic batch, right-padding each to the longest sequence.

    Padding uses id 0 with mask 0 so the padded positions are ignored by attention. Returns the
    merged arrays and each request's batch size, for `split_outputs`.
    """
    if not requests:
        raise ValueError("merge_requests needs at least one request")
    total = sum(r.batch_size for r in requests)
    longest = max(int(r.input_ids.shape[1]) for r in requests)
    merged = {
        name: np.full((total, longest), PAD_ID if name != "attention_mask" else 0, dtype=np.int64)
        for name in TOKEN_INPUTS
    }
    row = 0
    for request in requests:
        rows, seq = request.input_ids.shape
        merged["input_ids"][row : row + rows, :seq] = request.input_ids
        merged["attention_mask"][row : row + rows, :seq] = request.attention_mask
        if request.token_type_ids is not None:
            merged["token_type_ids"][row : row + rows, :seq] = request.token_type_ids
        row += rows
    return merged, [r.batch_size for r in requests]


def split_outputs(array: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Inverse of the stacking in `merge_requests` along the batch axis."""
    if sum(sizes) != array.shape[0]:
        raise ValueError(f"sizes {list(sizes)} do not add up to the batch of {array.shape[0]} rows")
    return np.split(array, np.cumsum(sizes)[:-1], axis=0)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)  # subtract the max so exp never overflows
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def labels_for(probabilities: np.ndarray, labels: Sequence[str]) -> tuple[str, ...]:
    return tuple(labels[i] for i in probabilities.argmax(axis=-1))


def use_gpu(device_id: int) -> None:
    """Make CUDA device `device_id` current for the engine this process opens (Triton's GPU instance)."""
    import torch

    torch.cuda.set_device(device_id)


def open_bundle_engine(engine_dir: str | os.PathLike[str], spec: EngineSpec) -> Engine:
    """Open the bundle's engine in the runtime, with the threads and length buckets engine.json names (as the build
    validated it), and check that its inputs and output are the ones engine.json promises."""
    path = Path(engine_dir) / spec.model_file
    engine = load_engine(path, spec.runtime, spec.intra_op_threads, length_buckets=spec.length_buckets,
                         bucket_max_batch=spec.bucket_max_batch)
    inputs, outputs = set(engine.input_names), set(engine.output_names)
    if inputs != set(spec.input_names) or spec.output_name not in outputs:
        raise EngineLoadError(
            f"{path}: graph inputs {sorted(inputs)} / outputs {sorted(outputs)} do not match "
            f"engine.json input_names {list(spec.input_names)} / output_name {spec.output_name!r}"
        )
    return engine


def _merged_outputs(engine: Engine, spec: EngineSpec, requests: Sequence[RequestArrays], name: str, ndim: int,
                    width: int | None, expected: str) -> list[np.ndarray]:
    """ONE engine call for all requests; its output checked (`ndim` dims, last one `width`) and split back into
    one array per request."""
    merged, sizes = merge_requests(requests)
    out = np.asarray(engine.run({n: merged[n] for n in spec.input_names}), dtype=np.float32)
    if out.ndim != ndim or out.shape[-1] != width:
        raise RuntimeError(f"engine returned {name} of shape {list(out.shape)}, expected {expected}")
    return split_outputs(out, sizes)


def _classify(engine: Engine, spec: EngineSpec, requests: Sequence[RequestArrays]) -> list[ClassifiedRows]:
    results = []
    for part in _merged_outputs(engine, spec, requests, "logits", 2, spec.num_labels,
                                f"[batch, {spec.num_labels}] (one column per label in engine.json)"):
        probabilities = softmax(part)
        results.append(ClassifiedRows(part, probabilities, labels_for(probabilities, spec.labels)))
    return results


def _embed(engine: Engine, spec: EngineSpec, requests: Sequence[RequestArrays]) -> list[EmbeddedRows]:
    return [EmbeddedRows(part) for part in _merged_outputs(
        engine, spec, requests, "embeddings", 2, spec.embedding_dim,
        f"[batch, {spec.embedding_dim}] (embedding_dim in engine.json)")]


@dataclass(frozen=True)
class TaggedRows:
    """A token classifier's outputs for one request: logits and probabilities [batch, seq, tags]."""

    logits: np.ndarray
    probabilities: np.ndarray


def _tag(engine: Engine, spec: EngineSpec, requests: Sequence[RequestArrays]) -> list[TaggedRows]:
    parts = _merged_outputs(engine, spec, requests, "logits", 3, spec.num_labels,
                            f"[batch, seq, {spec.num_labels}] (one column per tag in engine.json)")
    rows = []
    for request, part in zip(requests, parts, strict=True):
        part = part[:, : request.input_ids.shape[1]]  # back to this request's own length
        rows.append(TaggedRows(part, softmax(part)))
    return rows


Rows = ClassifiedRows | EmbeddedRows | TaggedRows


def run_batch(engine: Engine, spec: EngineSpec, requests: Sequence[RequestArrays]) -> list[Rows | Exception]:
    """Classify (or embed) all requests with ONE engine call.

    If that call fails (e.g. a token id beyond the vocabulary when vocab_size is unknown), each
    request is retried alone so only the offending ones get an error: one bad request never fails
    the others.
    """
    if not requests:
        return []
    infer = _embed if spec.is_embedding else _tag if spec.is_token_task else _classify
    try:
        return list(infer(engine, spec, requests))
    except Exception as batch_error:
        if len(requests) == 1:
            return [batch_error]
    outcomes: list[Rows | Exception] = []
    for request in requests:
        try:
            outcomes.append(infer(engine, spec, [request])[0])
        except Exception as exc:
            outcomes.append(exc)
    return outcomes
