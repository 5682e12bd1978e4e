"""Triton python-backend model for `<name>.v<N>.tokenizer`: TEXT -> INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS and
VERSION (the publish version, which the engine of the same version checks).

Copied verbatim as `model.py` into each published version directory, next to `tokenizer/` and
`engine.json` (for max_sequence_length). Each request is padded to its own longest text; the engine
model re-pads when it merges requests of a dynamic batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from engineforge.defaults import TOKENIZER_DIRNAME
    from engineforge.engines import tokenize_runtime as rt
    from engineforge.engines.engine_spec import EngineSpec
    from engineforge.engines.request_limits import limits_for_model
    from engineforge.serve.model_layout import TOKEN_EXTRA_NAMES, TOKEN_TENSOR_NAMES, published_version_of
    from engineforge.serve.published import HASH_KEYS, verify_published_files
except ImportError as exc:  # the stub runs the python found on PATH; it must have engineforge
    raise ImportError(
        "engineforge is not importable by the Triton python backend stub; start the server with "
        "`engineforge serve` (which puts the engineforge virtualenv first on PATH)"
    ) from exc

OUTPUTS = TOKEN_TENSOR_NAMES


def _error(message: str, code: int) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.spec = EngineSpec.load(version_dir)
        self.limits = limits_for_model(config, self.spec)  # config.pbtxt's limit.* parameters
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        # A token classifier's tokenizer also returns OFFSETS and WORD_IDS (the config lists them).
        self.outputs = {key: name for key, name in (OUTPUTS | TOKEN_EXTRA_NAMES).items() if name in self.dtypes}
        self.with_offsets = len(self.outputs) > len(OUTPUTS)
        self.version = published_version_of(config, args["model_version"])
        verify_published_files(version_dir, {HASH_KEYS["tokenizer"]: TOKENIZER_DIRNAME})  # never a changed tokenizer
        self.tokenizer = rt.load_tokenizer(version_dir / TOKENIZER_DIRNAME)

    def _tokenize(self, request) -> pb_utils.InferenceResponse:
        tensor = pb_utils.get_input_tensor_by_name(request, "TEXT")
        if tensor is None:
            raise rt.TokenizationError("TEXT is required")
        texts = rt.decode_texts(tensor.as_numpy(), batched=True, limits=self.limits)
        arrays = rt.tokenize_within_limits(self.tokenizer, texts, self.spec.max_sequence_length, self.limits,
                                           self.with_offsets)
        version = np.array([[self.version.encode()]] * len(texts), dtype=object)
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, arrays[key].astype(self.dtypes[name])) for key, name in self.outputs.items()
            ] + [pb_utils.Tensor("VERSION", version)]
        )

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                responses.append(self._tokenize(request))
            except rt.TokenizationError as exc:
                responses.append(_error(str(exc), pb_utils.TritonError.INVALID_ARG))
            except Exception as exc:  # never crash the stub; this request alone gets the error
                responses.append(_error(f"internal tokenizer error: {exc}", pb_utils.TritonError.INTERNAL))
        return responses

    def finalize(self) -> None:
        self.tokenizer = None
