"""Real tritonserver serving non-ONNX-Runtime engines: OpenVINO (fp32 ONNX) and torch-bnb (NF4 model/).

One server for the module serves both models; each must answer over gRPC with the probabilities an
in-process run of the same bundle in the same runtime gives.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import InferenceRequestError, ServerError
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import TritonServer, find_triton
from tests.helpers.in_process import probabilities_one_by_one
from tests.helpers.tiny_bnb import cached_bnb_build
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401

pytestmark = pytest.mark.triton

TEXTS = ["where is my order #1234?", "I want my money back for the broken headphones", "ok",
         "my account got locked after too many attempts, please help"]


@pytest.fixture(scope="module")
def bundles(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    openvino = tmp_path_factory.mktemp("ov") / "bundle"
    shutil.copytree(tiny_bundle, openvino)
    EngineSpec.from_dict(EngineSpec.load(openvino).to_dict() | {"runtime": "openvino"}).save(openvino)
    # As plan_serving writes it: one static-length model per bucket, instances from the measured plan.
    bucketed = tmp_path_factory.mktemp("ov_buckets") / "bundle"
    shutil.copytree(openvino, bucketed)
    plan = {"instances": 1, "intra_op_threads": 1, "why": "measured on the traffic profile (test)", "candidates": []}
    EngineSpec.from_dict(EngineSpec.load(bucketed).to_dict() | {"length_buckets": [8, 16, 32],
                                                                "serving_plan": plan}).save(bucketed)
    build_dir, _ = cached_bnb_build(tmp_path_factory)
    return {"ov": openvino, "ov_buckets": bucketed, "bnb": build_dir / "engine"}


@pytest.fixture(scope="module")
def client(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineforgeClient]:
    try:
        find_triton()
    except ServerError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("serve_runtimes")
    for name, bundle in bundles.items():
        publish_engine(bundle, root / "repo", name, max_batch_size=8)
    with TritonServer(root / "repo", log_file=root / "tritonserver.log", startup_timeout_s=120) as server, \
            EngineforgeClient(server.grpc_url, timeout_s=30) as connected:
        yield connected


@pytest.mark.parametrize("model", ["ov", "ov_buckets", "bnb"])
def test_served_probabilities_match_in_process_runtime(client, bundles, model):
    spec = EngineSpec.load(bundles[model])
    predictions = client.classify(TEXTS, model=model)  # one request: padded and merged server-side
    got = np.array([[p.probabilities[label] for label in spec.labels] for p in predictions])
    # Served with length buckets, the answers are those of the unpadded engine.
    expected = probabilities_one_by_one(bundles["ov" if model == "ov_buckets" else model], TEXTS)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert [p.label for p in predictions] == [spec.labels[i] for i in expected.argmax(axis=1)]
    config = client._client.get_model_config(f"{model}_engine").config
    assert config.parameters["runtime"].string_value == spec.runtime
    if spec.serving_plan:  # the versioned engine model carries the serving settings
        served = client._client.get_model_config(f"{model}.v1.engine").config
        assert served.instance_group[0].count == 1
        assert served.parameters["why.instances"].string_value.startswith("1: from engine.json's serving_plan")
        assert [w.name for w in served.model_warmup][-3:] == ["bucket_8", "bucket_16", "text"]


@pytest.mark.parametrize("model", ["ov", "bnb"])
def test_bad_request_gets_invalid_arg_and_the_server_keeps_serving(client, bundles, model):
    ids = np.array([[101, 40000, 102]], dtype=np.int64)  # beyond the vocabulary
    with pytest.raises(InferenceRequestError, match=r"input_ids must be in \[0, 30522\)"):
        client.classify_token_ids(ids, np.ones_like(ids), model=model)
    (prediction,) = client.classify(TEXTS[:1], model=model)
    expected = probabilities_one_by_one(bundles[model], TEXTS[:1])[0]
    np.testing.assert_allclose([prediction.probabilities[label] for label in EngineSpec.load(bundles[model]).labels],
                               expected, atol=1e-4)
