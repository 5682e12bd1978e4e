"""gRPC client for engineforge models served by Triton (KServe v2 protocol).

Errors come back typed: ServerUnavailableError (nothing listens), ModelNotReadyError (names the
model and lists the ready ones), InferenceRequestError (the server's own message for a rejected
request), ServerError (timeouts and other server-side failures).

Failures a restart or a reload repairs are retried until the call's deadline (`timeout_s`); the connection, its
retries and typed errors are client_connection.Connection's (TLS with `tls=ClientTls(ca, cert, key)`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engineforge.defaults import DEFAULT_GRPC_URL, DEFAULT_MODEL_NAME
from engineforge.engines.engine_spec import EMBEDDINGS, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION
from engineforge.errors import InferenceRequestError, ModelNotReadyError, ServerError
from engineforge.lm.bundle import TEXT_GENERATION

from .client_connection import Connection, NotReadyYet
from .lm_client import GeneratedPiece, check_generation_args, generation_inputs, stream_generate
from .model_layout import ENGINE_SUFFIX, LABELS_PARAMETER

_NUMPY_TO_TRITON = {
    "int64": "INT64", "int32": "INT32", "float32": "FP32", "float64": "FP64", "float16": "FP16",
    "bool": "BOOL", "object": "BYTES", "uint8": "UINT8", "int8": "INT8",
}  # fmt: skip


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]

    @property
    def score(self) -> float:
        """Probability of the predicted label."""
        return self.probabilities[self.label]


class EngineforgeClient(Connection):
    """Classify through `<model>` (text -> ensemble) or `<model>_engine` (token ids)."""

    def __init__(self, url: str = DEFAULT_GRPC_URL, **options: Any) -> None:
        """Options as for `Connection`: timeout_s, retry, retry_s, tls, control_key, log, timeout_option."""
        super().__init__(url, **options)
        self._labels: dict[str, tuple[str, ...]] = {}
        self._tasks: dict[str, str] = {}

    def _forget(self, model: str) -> None:
        self._labels.pop(model, None)

    def labels(self, model: str = DEFAULT_MODEL_NAME) -> tuple[str, ...]:
        """Label names (index = class id) from the model config's `labels` parameter; checks readiness."""
        if model not in self._labels:
            def fetch(timeout: float) -> Any:
                if not self._client.is_model_ready(model, client_timeout=timeout):
                    raise NotReadyYet(model)
                return self._client.get_model_config(model, client_timeout=timeout).config

            config = self._call(fetch, model)
            if "task" in config.parameters and config.parameters["task"].string_value == TEXT_GENERATION:
                raise InferenceRequestError(f"model {model!r} is a text-generation LM: call generate() "
                                            "(`engineforge generate`) instead")
            if LABELS_PARAMETER not in config.parameters:
                raise ModelNotReadyError(
                    f"model {model!r} has no '{LABELS_PARAMETER}' parameter; it was not published by engineforge"
                )
            self._labels[model] = tuple(json.loads(config.parameters[LABELS_PARAMETER].string_value))
            self._tasks[model] = (config.parameters["task"].string_value if "task" in config.parameters
                                  else TEXT_CLASSIFICATION)
        return self._labels[model]

    def task(self, model: str = DEFAULT_MODEL_NAME) -> str:
        """"text-classification", "token-classification" or "embeddings", from the model config (checks
        readiness)."""
        self.labels(model)
        return self._tasks[model]

    def _expect_task(self, model: str, task: str) -> None:
        served = self.task(model)
        if served != task:
            use = {EMBEDDINGS: "embed()/embed_token_ids()", TOKEN_CLASSIFICATION: "entities()"}.get(
                served, "classify()/classify_token_ids()")
            raise InferenceRequestError(f"model {model!r} serves {served}, not {task}: call {use} instead")

    def embed(self, texts: str | Sequence[str], model: str = DEFAULT_MODEL_NAME) -> np.ndarray:
        """Embeddings [len(texts), dim] of raw texts through the ensemble of an embedding build (one request)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InferenceRequestError("give one or more texts (strings) to embed")
        self._expect_task(model, EMBEDDINGS)
        array = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
        return self._embeddings(model, self.infer(model, {"TEXT": array}, ("EMBEDDING",)), len(texts))

    def embed_token_ids(self, input_ids: Sequence[Sequence[int]] | np.ndarray,
                        attention_mask: Sequence[Sequence[int]] | np.ndarray,
                        token_type_ids: Sequence[Sequence[int]] | np.ndarray | None = None,
                        model: str = DEFAULT_MODEL_NAME) -> np.ndarray:
        """Embeddings of pre-tokenized [batch, seq] ids through `<model>_engine`."""
        engine = model if model.endswith(ENGINE_SUFFIX) else model + ENGINE_SUFFIX
        self._expect_task(engine, EMBEDDINGS)
        inputs = _token_inputs(input_ids, attention_mask, token_type_ids)
        return self._embeddings(engine, self.infer(engine, inputs, ("EMBEDDING",)), len(inputs["INPUT_IDS"]))

    def entities(self, texts: str | Sequence[str], model: str = DEFAULT_MODEL_NAME, strategy: str = "simple",
                 with_tags: bool = False) -> list[list[dict[str, Any]]] | tuple[list[list[dict[str, Any]]], list]:
        """Entities per text ({label, start, end, score, text}; character offsets) from a token classifier's
        ensemble, aggregated by `strategy` ("simple", "first" or "max"); `with_tags` also returns each text's
        per-token tags."""
        from engineforge.ner import STRATEGIES

        if strategy not in STRATEGIES:
            raise InferenceRequestError(f"strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InferenceRequestError("give one or more texts (strings) to tag")
        self._expect_task(model, TOKEN_CLASSIFICATION)
        array = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
        result = self.infer(model, {"TEXT": array}, ("ENTITIES", "TOKEN_LABELS"))
        if result["ENTITIES"] is None or result["ENTITIES"].shape[0] != len(texts):
            raise ServerError(f"{model} returned ENTITIES of shape {getattr(result['ENTITIES'], 'shape', None)} "
                              f"for {len(texts)} texts")
        found = [json.loads(row.reshape(-1)[0])[strategy] for row in result["ENTITIES"]]
        tags = [json.loads(row.reshape(-1)[0]) for row in result["TOKEN_LABELS"]]
        return (found, tags) if with_tags else found

    @staticmethod
    def _embeddings(model: str, result: dict[str, np.ndarray], rows: int) -> np.ndarray:
        embeddings = result["EMBEDDING"]
        if embeddings is None or embeddings.ndim != 2 or embeddings.shape[0] != rows or embeddings.shape[1] < 1:
            raise ServerError(f"{model} returned EMBEDDING of shape {getattr(embeddings, 'shape', None)} for {rows} "
                              "inputs; is the numpy in the server's environment < 2?")
        return embeddings

    def generate(self, prompt: str | Sequence[int], *, model: str = DEFAULT_MODEL_NAME, max_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                 seed: int | None = None, stop: Sequence[str] | str | None = None,
                 stream_timeout_s: float | None = None) -> Iterator[GeneratedPiece]:
        """Stream a published LM's continuation of `prompt` (text, or token ids): pieces (text, token ids, arrival
        times; the last with finish_reason and counts) as the server decodes them. Parameters left None take the
        server's defaults (greedy, max_tokens what fits up to 128). Stopping the iteration cancels the request on
        the server. `serve.lm_client.collect` gathers the pieces into one GenerationResult (text, ttft, tokens/s)."""
        check_generation_args(prompt)
        inputs = generation_inputs(prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                   seed=seed, stop=stop)
        return stream_generate(self, model, inputs, stream_timeout_s)

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Low-level call: numpy arrays in (dtype sent as is), numpy arrays out, errors typed."""
        request = []
        for name, array in inputs.items():
            array = np.asarray(array)
            dtype = _NUMPY_TO_TRITON.get(array.dtype.name)
            if dtype is None:
                raise InferenceRequestError(f"input {name}: numpy dtype {array.dtype} has no Triton equivalent")
            tensor = self._grpc.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        wanted = [self._grpc.InferRequestedOutput(name) for name in outputs]
        result = self._call(lambda timeout: self._client.infer(model, request, outputs=wanted, client_timeout=timeout),
                            model)
        return {name: result.as_numpy(name) for name in outputs}

    def _predictions(self, model: str, result: dict[str, np.ndarray]) -> list[Prediction]:
        labels = self.labels(model)
        probabilities = result["PROBABILITIES"]
        if probabilities is None or probabilities.ndim != 2 or probabilities.shape[1] != len(labels):
            raise ServerError(
                f"{model} returned PROBABILITIES of shape {getattr(probabilities, 'shape', None)} for "
                f"{len(labels)} labels; is the numpy in the server's environment < 2?"
            )
        predicted = [value.decode("utf-8") for value in result["LABEL"].reshape(-1)]
        return [
            Prediction(label, {name: float(p) for name, p in zip(labels, row, strict=True)})
            for label, row in zip(predicted, probabilities, strict=True)
        ]

    def classify(self, texts: str | Sequence[str], model: str = DEFAULT_MODEL_NAME) -> list[Prediction]:
        """Classify raw texts through the ensemble `model` (one request; the server enforces max_batch_size)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InferenceRequestError("no texts to classify")
        if not all(isinstance(t, str) for t in texts):
            raise InferenceRequestError("texts must be strings")
        self._expect_task(model, TEXT_CLASSIFICATION)  # readiness check with a clear error before sending data
        array = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
        return self._predictions(model, self.infer(model, {"TEXT": array}, ("LABEL", "PROBABILITIES")))

    def classify_token_ids(
        self,
        input_ids: Sequence[Sequence[int]] | np.ndarray,
        attention_mask: Sequence[Sequence[int]] | np.ndarray,
        token_type_ids: Sequence[Sequence[int]] | np.ndarray | None = None,
        model: str = DEFAULT_MODEL_NAME,
    ) -> list[Prediction]:
        """Classify pre-tokenized [batch, seq] ids through `<model>_engine` (bypasses the tokenizer)."""
        engine = model if model.endswith(ENGINE_SUFFIX) else model + ENGINE_SUFFIX
        self._expect_task(engine, TEXT_CLASSIFICATION)
        inputs = _token_inputs(input_ids, attention_mask, token_type_ids)
        return self._predictions(engine, self.infer(engine, inputs, ("LABEL", "PROBABILITIES")))


def _token_inputs(input_ids: Any, attention_mask: Any, token_type_ids: Any) -> dict[str, np.ndarray]:
    inputs = {"INPUT_IDS": _int64_matrix("input_ids", input_ids),
              "ATTENTION_MASK": _int64_matrix("attention_mask", attention_mask)}
    if token_type_ids is not None:
        inputs["TOKEN_TYPE_IDS"] = _int64_matrix("token_type_ids", token_type_ids)
    return inputs


def _int64_matrix(name: str, value: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise InferenceRequestError(f"{name} must be a rectangular [batch, seq] array: {exc}") from exc
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise InferenceRequestError(f"{name} must be integers of shape [batch, seq], got {array.dtype} {array.shape}")
    return array.astype(np.int64)
