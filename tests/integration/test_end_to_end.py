"""checkpoint → build-engine → Triton over gRPC: served answers equal in-process ONNX Runtime answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engineforge.build.cli import main as build_engine
from engineforge.engines.engine_spec import EngineSpec
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.engine_runtime import softmax
from engineforge.serve.server import TritonServer
from tests.helpers.logits import file_logits

pytestmark = pytest.mark.triton


def test_built_engine_serves_the_same_answers_as_in_process(tiny_checkpoint, tiny_eval_data, tmp_path, capsys):
    repo, out = tmp_path / "repo", tmp_path / "build"
    args = [str(tiny_checkpoint), "--eval-data", str(tiny_eval_data), "-o", str(out), "--repo", str(repo),
            "--model-name", "tiny"]
    assert build_engine(args) == 0
    assert "Published `tiny` version 1" in capsys.readouterr().out
    # A second build publishes version 2 beside version 1 instead of replacing it.
    assert build_engine([*args, "--preset", "fp32", "--overwrite"]) == 0
    assert sorted(p.name for p in (repo / "tiny_engine").iterdir() if p.name.isdigit()) == ["1", "2"]

    bundle = out / "engine"
    spec = EngineSpec.load(bundle)
    assert spec.precision == "fp32"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))
    texts = [json.loads(line)["text"] for line in tiny_eval_data.read_text().splitlines()]
    expected = softmax(file_logits(bundle / "model.onnx", tokenizer, texts, max_length=spec.max_sequence_length))

    with TritonServer(repo) as server:
        client = EngineforgeClient(server.grpc_url)
        served = client.classify(texts, model="tiny")
        got = np.array([[p.probabilities[label] for label in spec.labels] for p in served])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert [p.label for p in served] == [spec.labels[i] for i in expected.argmax(axis=1)]

        # Token ids straight to the engine model give the same answer as the text path.
        encoded = tokenizer(texts[:3], padding=True, return_tensors="np")
        by_ids = client.classify_token_ids(encoded["input_ids"], encoded["attention_mask"],
                                           encoded["token_type_ids"], model="tiny_engine")
        np.testing.assert_allclose([[p.probabilities[label] for label in spec.labels] for p in by_ids],
                                   expected[:3], atol=1e-5)
