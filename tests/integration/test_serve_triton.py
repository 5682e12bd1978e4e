"""Real tritonserver + real gRPC: a published tiny engine answers exactly like in-process ONNX Runtime.

One server per module (startup ~5 s); every bad-input test checks the server still answers afterwards.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import InferenceRequestError, ModelNotReadyError, ServerError, ServerUnavailableError
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.engine_runtime import softmax
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import TritonServer, find_triton, free_port
from tests.helpers.tiny_engine import TINY_LABELS, reference_logits, tiny_bundle  # noqa: F401

pytestmark = pytest.mark.triton

MODEL = "clf"
UNCHECKED = "novocab"
MAX_BATCH = 8
TEXTS = [
    "where is my order #1234?",
    "I want my money back",
    "how long does shipping to Lyon take",
    "héllo wörld, ça va?",
    "ok",
]


@pytest.fixture(scope="module")
def served(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:  # noqa: F811
    try:
        find_triton()
    except ServerError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("serve")
    repo = root / "model_repo"
    publish_engine(tiny_bundle, repo, MODEL, max_batch_size=MAX_BATCH)
    # A second build becomes version 2 and must be the one served.
    second = root / "bundle2"
    shutil.copytree(tiny_bundle, second)
    EngineSpec.from_dict(EngineSpec.load(second).to_dict() | {"build_id": "tiny-build-2"}).save(second)
    # A long queue delay makes the concurrent test's requests land in one dynamic batch.
    publish_engine(second, repo, MODEL, max_batch_size=MAX_BATCH, max_queue_delay_us=20_000)
    # An engine.json without vocab_size: an out-of-vocabulary id passes validation and fails in the engine.
    unchecked = root / "bundle-no-vocab"
    shutil.copytree(tiny_bundle, unchecked)
    EngineSpec.from_dict({k: v for k, v in EngineSpec.load(unchecked).to_dict().items() if k != "vocab_size"}).save(
        unchecked)
    publish_engine(unchecked, repo, UNCHECKED, max_batch_size=MAX_BATCH)
    with TritonServer(repo, log_file=root / "tritonserver.log", startup_timeout_s=120) as server:
        yield server


@pytest.fixture
def client(served: TritonServer) -> Iterator[EngineforgeClient]:
    with EngineforgeClient(served.grpc_url, timeout_s=20) as c:
        yield c


def expected_probabilities(bundle: Path, text: str) -> np.ndarray:
    from transformers import AutoTokenizer

    spec = EngineSpec.load(bundle)
    tokenizer = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))
    encoded = tokenizer([text], truncation=True, max_length=spec.max_sequence_length, return_tensors="np")
    return softmax(reference_logits(bundle, encoded["input_ids"], encoded["attention_mask"]))[0]


def assert_matches(bundle: Path, text: str, prediction) -> None:
    expected = expected_probabilities(bundle, text)
    got = np.array([prediction.probabilities[label] for label in TINY_LABELS])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert prediction.label == TINY_LABELS[int(expected.argmax())]


def assert_still_serving(client: EngineforgeClient, bundle: Path) -> None:
    (prediction,) = client.classify(["still alive?"], model=MODEL)
    assert_matches(bundle, "still alive?", prediction)


def test_newest_version_serves(client: EngineforgeClient, served: TritonServer) -> None:
    metadata = client._client.get_model_metadata(f"{MODEL}_engine")
    assert list(metadata.versions) == ["2"]
    config = client._client.get_model_config(MODEL).config
    assert config.parameters["build_id"].string_value == "tiny-build-2"
    assert client.labels(MODEL) == TINY_LABELS
    # every answer says which version produced it, on the text and the token-id path alike
    text = np.array([[b"where is my order?"]], dtype=object)
    assert client.infer(MODEL, {"TEXT": text}, ("VERSION",))["VERSION"].tolist() == [[b"2"]]
    ids = {"INPUT_IDS": np.array([[101, 2073, 102]]), "ATTENTION_MASK": np.ones((1, 3), np.int64)}
    assert client.infer(f"{MODEL}_engine", ids, ("VERSION",))["VERSION"].tolist() == [[b"2"]]


def test_classify_texts_matches_in_process_onnxruntime(client, tiny_bundle) -> None:  # noqa: F811
    predictions = client.classify(TEXTS, model=MODEL)
    assert len(predictions) == len(TEXTS)
    for text, prediction in zip(TEXTS, predictions, strict=True):
        assert_matches(tiny_bundle, text, prediction)
        assert prediction.score == max(prediction.probabilities.values())


def test_classify_token_ids_matches(client, tiny_bundle) -> None:  # noqa: F811
    rng = np.random.default_rng(3)
    ids = rng.integers(1000, 20000, (3, 10))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    predictions = client.classify_token_ids(ids, mask, np.zeros_like(ids), model=MODEL)
    expected = softmax(reference_logits(tiny_bundle, ids, mask))
    for row, prediction in zip(expected, predictions, strict=True):
        np.testing.assert_allclose([prediction.probabilities[n] for n in TINY_LABELS], row, atol=1e-5)
        assert prediction.label == TINY_LABELS[int(row.argmax())]
    # TOKEN_TYPE_IDS is optional
    (alone,) = client.classify_token_ids(ids[:1], mask[:1], model=MODEL)
    assert alone == predictions[0]


def test_concurrent_requests_are_batched_and_correct(served, tiny_bundle) -> None:  # noqa: F811
    texts = [f"{TEXTS[i % len(TEXTS)]} {'extra ' * i}" for i in range(6)]
    results: dict[int, object] = {}
    barrier = threading.Barrier(len(texts))

    def worker(index: int) -> None:
        with EngineforgeClient(served.grpc_url, timeout_s=20) as own:
            own.labels(MODEL)
            barrier.wait()
            try:
                results[index] = own.classify([texts[index]], model=MODEL)[0]
            except Exception as exc:  # reported below with the index
                results[index] = exc

    with EngineforgeClient(served.grpc_url) as stats_client:
        before = stats_client._client.get_inference_statistics(f"{MODEL}.v2.engine").model_stats[0]
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(texts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        after = stats_client._client.get_inference_statistics(f"{MODEL}.v2.engine").model_stats[0]
    for index, text in enumerate(texts):
        assert not isinstance(results[index], Exception), results[index]
        assert_matches(tiny_bundle, text, results[index])
    requests = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert requests == len(texts)
    assert executions < requests, "dynamic batching never merged requests of different lengths"


def bad_requests() -> list:
    """(case id, model suffix, raw inputs, expected message)."""
    ids = np.array([[101, 2054, 102]], dtype=np.int64)
    cases = [
        ("fp32_ids", "_engine", {"INPUT_IDS": ids.astype(np.float32), "ATTENTION_MASK": np.ones_like(ids)},
         "data-type is 'FP32'"),
        ("empty_text", "", {"TEXT": np.array([[b"   "]], dtype=object)}, "empty or whitespace only"),
        ("non_utf8", "", {"TEXT": np.array([[b"\xff\xfe"]], dtype=object)}, "not valid UTF-8"),
        ("oversized_batch", "", {"TEXT": np.array([[b"hi"]] * (MAX_BATCH + 1), dtype=object)},
         f"batch-size must be <= {MAX_BATCH}"),
        ("too_long", "_engine", {"INPUT_IDS": np.full((1, 129), 1000), "ATTENTION_MASK": np.ones((1, 129), np.int64)},
         "exceeds the engine's limit of 128 tokens"),
        ("mask_shape", "_engine", {"INPUT_IDS": ids, "ATTENTION_MASK": np.ones((1, 2), np.int64)},
         "differs from input_ids shape"),
        ("id_out_of_vocab", "_engine", {"INPUT_IDS": ids * 1000, "ATTENTION_MASK": np.ones_like(ids)},
         r"must be in \[0, 30522\)"),
    ]  # fmt: skip
    return [pytest.param(*rest, id=case) for case, *rest in cases]


@pytest.mark.parametrize(("suffix", "inputs", "message"), bad_requests())
def test_bad_input_is_rejected_and_server_stays_up(client, tiny_bundle, suffix, inputs, message) -> None:  # noqa: F811
    with pytest.raises(InferenceRequestError, match=message):
        client.infer(MODEL + suffix, inputs, ("LABEL",))
    assert_still_serving(client, tiny_bundle)


def test_bad_request_in_a_batch_does_not_fail_the_others(served, tiny_bundle) -> None:  # noqa: F811
    outcomes: dict[str, object] = {}
    barrier = threading.Barrier(3)

    def send(name: str, ids: np.ndarray) -> None:
        with EngineforgeClient(served.grpc_url, timeout_s=20) as own:
            own.labels(f"{MODEL}_engine")
            barrier.wait()
            try:
                outcomes[name] = own.classify_token_ids(ids, np.ones_like(ids), model=MODEL)[0]
            except InferenceRequestError as exc:
                outcomes[name] = exc

    good_ids = np.array([[101, 7592, 2088, 102]])
    jobs = {"good1": good_ids, "bad": np.full((1, 3), 99999), "good2": good_ids[:, :3]}
    threads = [threading.Thread(target=send, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert isinstance(outcomes["bad"], InferenceRequestError)
    for name in ("good1", "good2"):
        expected = softmax(reference_logits(tiny_bundle, jobs[name], np.ones_like(jobs[name])))[0]
        np.testing.assert_allclose([outcomes[name].probabilities[n] for n in TINY_LABELS], expected, atol=1e-5)


def test_an_engine_failure_on_a_valid_request_is_a_server_error_not_the_clients(client, tiny_bundle) -> None:  # noqa: F811
    ids = np.array([[101, 10**6, 102]], dtype=np.int64)
    with pytest.raises(ServerError, match=r"failed while running novocab_engine: .*the engine failed on this request"):
        client.infer(UNCHECKED + "_engine", {"INPUT_IDS": ids, "ATTENTION_MASK": np.ones_like(ids)}, ("LABEL",))
    assert_still_serving(client, tiny_bundle)


def test_unknown_model_names_ready_models(served) -> None:
    # No retries: a name that is not ready is retried for retry_s (it may be reloading), which would only wait here.
    with EngineforgeClient(served.grpc_url, retry=False) as client:
        with pytest.raises(ModelNotReadyError) as info:
            client.classify(["hi"], model="nope")
        assert "'nope'" in str(info.value) and f"{MODEL}_engine" in str(info.value)
        with pytest.raises(ModelNotReadyError, match="'nope_engine' is not ready"):
            client.infer("nope_engine", {"INPUT_IDS": np.ones((1, 2), np.int64)}, ("LABEL",))


def test_the_client_retries_a_not_ready_model_until_its_retry_budget(served) -> None:
    with EngineforgeClient(served.grpc_url, retry_s=1.0) as client:
        started = time.monotonic()
        with pytest.raises(ModelNotReadyError):
            client.classify(["hi"], model="nope")
        assert 0.4 < time.monotonic() - started < 5  # retried (an answer takes ms), and stopped at the budget


def test_dead_port_is_server_unavailable() -> None:
    url = f"127.0.0.1:{free_port()}"
    with EngineforgeClient(url, timeout_s=5) as dead, pytest.raises(ServerUnavailableError) as info:
        dead.classify(["hi"], model=MODEL)
    assert f"no Triton server answers at {url}" in str(info.value) and "engineforge serve" in str(info.value)


def test_cli_infer_against_server(served, capsys) -> None:
    import argparse
    import json

    from engineforge.serve import cli

    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    args = parser.parse_args(["infer", "--url", served.grpc_url, "--model", MODEL, "--json", *TEXTS[:2]])
    assert args.func(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [row["input"] for row in payload] == TEXTS[:2]
    assert set(payload[0]["probabilities"]) == set(TINY_LABELS)
    args = parser.parse_args(["infer", "--url", served.grpc_url, "--model", MODEL, "--token-ids", "101,2054,102"])
    assert args.func(args) == 0
    assert "order_status" in capsys.readouterr().out


def test_cli_infer_without_model_asks_the_only_served_one(served, tmp_path, capsys) -> None:
    import argparse
    import json

    from engineforge.serve import cli

    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    # The fixture's repository publishes two models: infer lists them instead of guessing.
    args = parser.parse_args(["infer", "--url", served.grpc_url, "--repo", str(served.repo), TEXTS[0]])
    assert args.func(args) == 2
    assert (f"2 models are served at {served.grpc_url}: {MODEL}, {UNCHECKED}; pick one with --model NAME"
            in capsys.readouterr().err)
    only = tmp_path / "repo" / MODEL  # a repository that publishes one of them
    only.mkdir(parents=True)
    for name in ("config.pbtxt", "versions.json"):
        shutil.copyfile(served.repo / MODEL / name, only / name)
    args = parser.parse_args(["infer", "--url", served.grpc_url, "--repo", str(only.parent), "--json", TEXTS[0]])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert f"model '{MODEL}': the only one served at {served.grpc_url}" in captured.err
    assert set(json.loads(captured.out)[0]["probabilities"]) == set(TINY_LABELS)
