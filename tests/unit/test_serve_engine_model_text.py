"""The one-hop engine model's `execute` without Triton: `triton_python_backend_utils` replaced by a stand-in, the model
initialised from a real published version directory. Whatever one execution holds (TEXT requests, token-id requests,
bad ones) is tokenized in one call and answered with one engine call; each bad request gets its own INVALID_ARG."""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as pb

from engineforge.engines.tokenize_runtime import load_tokenizer
from engineforge.errors import RepositoryError
from engineforge.serve import engine_runtime as rt
from engineforge.serve.repository import publish_engine
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401

INVALID_ARG, INTERNAL = 3, 13


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class _Error:
    INVALID_ARG, INTERNAL = INVALID_ARG, INTERNAL

    def __init__(self, message: str, code: int) -> None:
        self.message, self.code = message, code


class _Response:
    def __init__(self, output_tensors: list, error: _Error | None = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


def _fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor, module.TritonError, module.InferenceResponse = _Tensor, _Error, _Response
    module.get_input_tensor_by_name = lambda request, name: (
        _Tensor(name, request[name]) if name in request else None)
    module.triton_string_to_numpy = lambda dtype: object if dtype == "TYPE_STRING" else np.float32
    return module


def _published(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, dict]:
    """The engine model's module (importing the stand-in) and the `initialize` args of a one-hop version."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    module = importlib.reload(importlib.import_module("engineforge.serve.triton.engine_model"))
    publish_engine(bundle, tmp_path / "repo", "clf", max_batch_size=8, wait_s=None)
    model_dir = tmp_path / "repo" / "clf.v1.engine"
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())
    return module, {"model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
                    "model_repository": str(model_dir), "model_version": "1"}


@pytest.fixture
def model(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    module, args = _published(tiny_bundle, tmp_path, monkeypatch)
    instance = module.TritonPythonModel()
    instance.initialize(args)
    yield instance
    sys.modules.pop("engineforge.serve.triton.engine_model", None)  # never leave the stand-in's module behind


def text(*texts: str) -> dict[str, np.ndarray]:
    return {"TEXT": np.array([[t.encode()] for t in texts], dtype=object)}


def test_text_and_id_requests_of_one_execution_share_one_engine_call(model, tiny_bundle, monkeypatch):  # noqa: F811
    encoded = load_tokenizer(tiny_bundle / "tokenizer")(["where is my order?"], return_tensors="np")
    ids = {"INPUT_IDS": encoded["input_ids"].astype(np.int64),
           "ATTENTION_MASK": encoded["attention_mask"].astype(np.int64)}
    calls = []
    real = rt.run_batch
    monkeypatch.setattr(rt, "run_batch", lambda engine, spec, requests: calls.append(len(requests))
                        or real(engine, spec, requests))
    requests = [text("where is my order?"), ids, text("refund please", "ok"), text("  "), ids | text("hi"), {}]
    responses = model.execute(requests)
    assert calls == [3]  # the three good requests, text and ids, in ONE engine call
    np.testing.assert_allclose(responses[0].outputs["LOGITS"], responses[1].outputs["LOGITS"], atol=1e-5)
    assert responses[2].outputs["LABEL"].shape == (2, 1) and responses[0].outputs["VERSION"].tolist() == [[b"1"]]
    for index, message in ((3, "empty or whitespace only"), (4, "both TEXT and token ids"),
                           (5, "no input to answer")):
        assert responses[index].error.code == INVALID_ARG and message in responses[index].error.message


def test_a_changed_tokenizer_beside_the_engine_never_loads(tiny_bundle, tmp_path, monkeypatch):  # noqa: F811
    module, args = _published(tiny_bundle, tmp_path, monkeypatch)
    (Path(args["model_repository"]) / "1" / "tokenizer" / "vocab.txt").write_text("changed\n")
    try:
        with pytest.raises(RepositoryError, match=r"tokenizer: sha256 .* differs from the published"):
            module.TritonPythonModel().initialize(args)
    finally:
        sys.modules.pop("engineforge.serve.triton.engine_model", None)
