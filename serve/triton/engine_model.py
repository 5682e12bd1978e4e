"""Triton python-backend model for `<name>.v<N>.engine`: token id tensors -> LOGITS, PROBABILITIES, LABEL
(classifiers), EMBEDDING (embedding engines) or LOGITS, ENTITIES, TOKEN_LABELS (token classifiers), and VERSION (the
publish version that answered). Token ids that another version's tokenizer made (TOKENIZER_VERSION) are refused.
Published one-hop (config parameter text_path), it also takes TEXT instead of token ids and tokenizes it with the
bundle's tokenizer shipped beside it: the TEXT requests of a dynamic batch in one tokenizer call (text_runtime.py).

Copied verbatim as `model.py` into each published version directory, next to the engine files.
All requests of a dynamic batch are classified with ONE engine call (ONNX Runtime, OpenVINO or
torch-bnb or TensorRT, as engine.json says); a bad request gets an INVALID_ARG error on its own response while
the others in the batch are answered normally, and an engine failure on a valid request is INTERNAL.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from engineforge.defaults import TOKENIZER_DIRNAME
    from engineforge.engines.engine_spec import EngineSpec
    from engineforge.engines.request_limits import limits_for_model
    from engineforge.engines.tokenize_runtime import load_tokenizer
    from engineforge.serve import engine_runtime as rt
    from engineforge.serve import ner_runtime
    from engineforge.serve import text_runtime as text_rt
    from engineforge.serve.model_layout import TOKEN_TENSOR_NAMES, published_version_of
    from engineforge.serve.published import HASH_KEYS, verify_published_engine, verify_published_files
    from engineforge.serve.serving_defaults import TEXT_PATH_PARAMETER
except ImportError as exc:  # the stub runs the python found on PATH; it must have engineforge
    raise ImportError(
        "engineforge is not importable by the Triton python backend stub; start the server with "
        "`engineforge serve` (which puts the engineforge virtualenv first on PATH)"
    ) from exc

INPUTS = TOKEN_TENSOR_NAMES


def _error(message: str, code: int) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.spec = EngineSpec.load(version_dir)
        self.limits = limits_for_model(config, self.spec)  # config.pbtxt's limit.* parameters
        # The config and engine.json must come from the same publish: refuse labels that differ from this build's.
        configured = config.get("parameters", {}).get("labels", {}).get("string_value")
        if configured is not None and json.loads(configured) != list(self.spec.labels):
            raise ValueError(
                f"config.pbtxt labels {configured} differ from {version_dir}/engine.json labels "
                f"{list(self.spec.labels)}; republish this engine with engineforge"
            )
        self.dtypes = {
            output["name"]: pb_utils.triton_string_to_numpy(output["data_type"]) for output in config["output"]
        }
        self.version = published_version_of(config, args["model_version"])
        verify_published_engine(version_dir, self.spec)  # a tampered engine file never loads
        if args.get("model_instance_kind") == "GPU":  # Triton assigns each GPU instance its device
            rt.use_gpu(int(args["model_instance_device_id"]))
        self.engine = rt.open_bundle_engine(version_dir, self.spec)
        self.tokenizer = None  # two-hop: token ids only
        if config.get("parameters", {}).get(TEXT_PATH_PARAMETER, {}).get("string_value") == "one-hop":
            verify_published_files(version_dir, {HASH_KEYS["tokenizer"]: TOKENIZER_DIRNAME})  # never a changed one
            self.tokenizer = load_tokenizer(version_dir / TOKENIZER_DIRNAME)
        self.inputs = [i["name"] for i in config["input"]]

    def _read(self, request) -> rt.RequestArrays:
        arrays = {}
        for key, tensor_name in INPUTS.items():
            tensor = pb_utils.get_input_tensor_by_name(request, tensor_name)
            arrays[key] = None if tensor is None else tensor.as_numpy()
        if arrays["input_ids"] is None or arrays["attention_mask"] is None:
            raise rt.InvalidRequestError("INPUT_IDS and ATTENTION_MASK are both required")
        tokenized_by = pb_utils.get_input_tensor_by_name(request, "TOKENIZER_VERSION")
        if tokenized_by is not None:
            rt.check_same_version(tokenized_by.as_numpy(), self.version)
        return rt.validate_request_arrays(
            arrays["input_ids"],
            arrays["attention_mask"],
            arrays["token_type_ids"],
            max_positions=self.spec.max_request_tokens,
            vocab_size=self.spec.vocab_size,
            type_vocab_size=self.spec.type_vocab_size,
            takes_token_types=self.spec.uses_token_type_ids,
            max_tokens_per_request=self.limits.max_tokens_per_request,
        )

    def _extras(self, request, arrays: rt.RequestArrays) -> tuple:
        """A token classifier's optional OFFSETS, WORD_IDS and TEXT, checked against the token ids."""
        found = [pb_utils.get_input_tensor_by_name(request, name) for name in ("OFFSETS", "WORD_IDS", "TEXT")]
        offsets, word_ids = (None if t is None else t.as_numpy() for t in found[:2])
        texts = None if found[2] is None else text_rt.read_texts(found[2].as_numpy(), self.limits)
        ner_runtime.check_extras(arrays.input_ids.shape, offsets, word_ids, texts)
        return arrays.attention_mask, offsets, word_ids, texts

    def _respond(self, rows: rt.Rows, extras: tuple = ()) -> pb_utils.InferenceResponse:
        count = len(rows.embeddings) if isinstance(rows, rt.EmbeddedRows) else len(rows.logits)
        version = pb_utils.Tensor("VERSION", np.array([[self.version.encode()]] * count, dtype=object))
        return pb_utils.InferenceResponse(output_tensors=[*self._tensors(rows, extras), version])

    def _tensors(self, rows: rt.Rows, extras: tuple = ()) -> list:
        if isinstance(rows, rt.TaggedRows):
            entities, tags = ner_runtime.tagged_outputs(rows, self.spec.labels, *extras)
            return [
                pb_utils.Tensor("LOGITS", rows.logits.astype(self.dtypes["LOGITS"])),
                pb_utils.Tensor("ENTITIES", np.array([[e.encode("utf-8")] for e in entities], dtype=object)),
                pb_utils.Tensor("TOKEN_LABELS", np.array([[t.encode("utf-8")] for t in tags], dtype=object)),
            ]
        if isinstance(rows, rt.EmbeddedRows):
            return [pb_utils.Tensor("EMBEDDING", rows.embeddings.astype(self.dtypes["EMBEDDING"]))]
        labels = np.array([[label.encode("utf-8")] for label in rows.labels], dtype=self.dtypes["LABEL"])
        return [
            pb_utils.Tensor("LOGITS", rows.logits.astype(self.dtypes["LOGITS"])),
            pb_utils.Tensor("PROBABILITIES", rows.probabilities.astype(self.dtypes["PROBABILITIES"])),
            pb_utils.Tensor("LABEL", labels),
        ]

    def _read_all(self, requests: list, responses: list) -> tuple[list, dict]:
        """Each valid request's arrays (and a token classifier's extras), by request index; a refused request's error
        goes into `responses`. TEXT requests are tokenized together, in one call."""
        valid: dict[int, rt.RequestArrays] = {}
        extras: dict[int, tuple] = {}
        texts: dict[int, list[str]] = {}
        for index, request in enumerate(requests):
            try:
                present = {n for n in self.inputs if pb_utils.get_input_tensor_by_name(request, n) is not None}
                form = text_rt.request_form(present, tokenizes=self.tokenizer is not None,
                                            token_task=self.spec.is_token_task)
                if form == text_rt.TEXT_FORM:
                    texts[index] = text_rt.read_texts(pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy(),
                                                      self.limits)
                    continue
                arrays = self._read(request)
                if self.spec.is_token_task:
                    extras[index] = self._extras(request, arrays)
                valid[index] = arrays  # only once every check passed
            except rt.VersionMixError as exc:  # the server's fault, never the client's: fail, never answer
                responses[index] = _error(str(exc), pb_utils.TritonError.INTERNAL)
            except rt.InvalidRequestError as exc:
                responses[index] = _error(str(exc), pb_utils.TritonError.INVALID_ARG)
        for index, tokenized in text_rt.tokenize_requests(self.tokenizer, self.spec, self.limits, texts).items():
            if isinstance(tokenized, Exception):
                responses[index] = _error(str(tokenized), pb_utils.TritonError.INVALID_ARG)
            else:
                valid[index], extras[index] = tokenized.arrays, tokenized.extras
        return sorted(valid.items()), extras

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        try:
            valid, extras = self._read_all(requests, responses)
            outcomes = rt.run_batch(self.engine, self.spec, [arrays for _, arrays in valid])  # ONE engine call
            for (index, _), outcome in zip(valid, outcomes, strict=True):
                if isinstance(outcome, Exception):  # the request passed validation: the server failed, not it
                    message = f"the engine failed on this request: {type(outcome).__name__}: {outcome}"
                    responses[index] = _error(message, pb_utils.TritonError.INTERNAL)
                else:
                    responses[index] = self._respond(outcome, extras.get(index, ()))
        except Exception as exc:  # never crash the stub: answer every unanswered request instead
            for index, response in enumerate(responses):
                if response is None:
                    responses[index] = _error(f"internal error: {exc}", pb_utils.TritonError.INTERNAL)
        return responses

    def finalize(self) -> None:
        self.engine = self.tokenizer = None
