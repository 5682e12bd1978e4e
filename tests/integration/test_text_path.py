"""The one-hop text layout on a real Triton: the engine model tokenizes TEXT itself (one python-backend hop), served
beside the older two-hop layout (tokenizer model, then engine model) of the same bundle.

One-hop answers equal two-hop answers and the in-process computation; a request carrying both TEXT and token ids,
or neither, is INVALID_ARGUMENT and the server keeps answering; bad texts are refused with the same messages in
both layouts; TEXT and token-id requests of one dynamic batch share engine calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import InferenceServerException

from engineforge.engines.engine_spec import EngineSpec
from engineforge.engines.request_limits import derive_request_limits
from engineforge.engines.tokenize_runtime import load_tokenizer
from engineforge.errors import ServerError
from engineforge.serve import engine_runtime as rt
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import TritonServer, find_triton
from engineforge.serve.text_runtime import infer_texts
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401

pytestmark = pytest.mark.triton

MAX_BATCH = 8
TEXTS = ["where is my order #1234?", "I want my money back", "how long does shipping to Lyon take",
         "héllo wörld, ça va?", "ok"]
INVALID = "StatusCode.INVALID_ARGUMENT"
OUTPUTS = ("LABEL", "PROBABILITIES", "LOGITS", "VERSION")


@pytest.fixture(scope="module")
def served(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:  # noqa: F811
    try:
        find_triton()
    except ServerError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("text_path")
    repo = root / "repo"
    publish_engine(tiny_bundle, repo, "hop1", max_batch_size=MAX_BATCH, long_texts="refuse")  # the default layout
    publish_engine(tiny_bundle, repo, "hop2", max_batch_size=MAX_BATCH, long_texts="refuse", text_path="two-hop")
    # A long queue delay so concurrent requests land in one dynamic batch.
    publish_engine(tiny_bundle, repo, "slow", max_batch_size=MAX_BATCH, max_queue_delay_us=300_000, instances=1)
    with TritonServer(repo, log_file=root / "tritonserver.log", startup_timeout_s=180) as server:
        yield server


@pytest.fixture
def client(served: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(served.grpc_url)
    yield triton
    triton.close()


def infer(client, model: str, inputs: dict[str, np.ndarray], outputs=OUTPUTS) -> dict[str, np.ndarray]:
    tensors = []
    for name, array in inputs.items():
        dtype = "BYTES" if array.dtype == object else "INT64"
        tensors.append(grpcclient.InferInput(name, list(array.shape), dtype))
        tensors[-1].set_data_from_numpy(array)
    result = client.infer(model, tensors, outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
    return {name: result.as_numpy(name) for name in outputs}


def text(*texts: str) -> np.ndarray:
    return np.array([[t.encode()] for t in texts], dtype=object)


def token_ids(bundle: Path, *texts: str) -> dict[str, np.ndarray]:
    tokenizer = load_tokenizer(bundle / "tokenizer")
    encoded = tokenizer(list(texts), padding=True, return_tensors="np")
    return {"INPUT_IDS": encoded["input_ids"].astype(np.int64),
            "ATTENTION_MASK": encoded["attention_mask"].astype(np.int64)}


def assert_still_serving(client) -> None:
    assert infer(client, "hop1", {"TEXT": text("still alive?")})["LABEL"].shape == (1, 1)


def test_the_text_entry_point_runs_the_engine_alone(served: TritonServer, client) -> None:
    config = client.get_model_config("hop1").config
    assert [s.model_name for s in config.ensemble_scheduling.step] == ["hop1.v1.engine"]
    assert config.parameters["text_path"].string_value == "one-hop"
    index = {m.name for m in client.get_model_repository_index().models}
    assert "hop1.v1.tokenizer" not in index and "hop2.v1.tokenizer" in index
    # the config on disk, re-parsed with Triton's own schema, is what the server loaded
    on_disk = text_format.Parse((served.repo / "hop1.v1.engine" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert {i.name for i in on_disk.input} == {i.name for i in client.get_model_config("hop1.v1.engine").config.input}


def test_one_hop_answers_equal_two_hop_and_in_process(client, tiny_bundle: Path) -> None:  # noqa: F811
    spec = EngineSpec.load(tiny_bundle)
    engine, tokenizer = rt.open_bundle_engine(tiny_bundle, spec), load_tokenizer(tiny_bundle / "tokenizer")
    limits = derive_request_limits(spec, max_batch_size=MAX_BATCH, long_texts="refuse")
    for texts in (TEXTS, TEXTS[:1], TEXTS[3:]):
        one, two = (infer(client, model, {"TEXT": text(*texts)}) for model in ("hop1", "hop2"))
        np.testing.assert_array_equal(one["LOGITS"], two["LOGITS"])
        assert one["LABEL"].tolist() == two["LABEL"].tolist() and one["VERSION"].tolist() == [[b"1"]] * len(texts)
        rows, _ = infer_texts(engine, tokenizer, spec, limits, list(texts))
        np.testing.assert_allclose(one["LOGITS"], rows.logits, atol=1e-5)
        assert [label.decode() for label in one["LABEL"][:, 0]] == list(rows.labels)
    ids = token_ids(tiny_bundle, *TEXTS)  # the token-id entry point, as before
    np.testing.assert_allclose(infer(client, "hop1_engine", ids)["LOGITS"], infer(client, "hop1", {
        "TEXT": text(*TEXTS)})["LOGITS"], atol=1e-5)


@pytest.mark.parametrize("case", ["both", "neither", "type_ids_only"])
def test_a_request_needs_exactly_one_form(client, tiny_bundle: Path, case: str) -> None:  # noqa: F811
    ids = token_ids(tiny_bundle, "where is my order?")
    inputs, message = {
        "both": (ids | {"TEXT": text("where is my order?")}, "both TEXT and token ids"),
        "neither": ({"TOKENIZER_VERSION": np.array([[b"1"]], dtype=object)}, "no input to answer; send TEXT"),
        "type_ids_only": ({"TOKEN_TYPE_IDS": np.zeros((1, 3), np.int64)},
                          "INPUT_IDS and ATTENTION_MASK are both required"),
    }[case]
    with pytest.raises(InferenceServerException) as error:
        infer(client, "hop1.v1.engine", inputs)
    assert error.value.status() == INVALID and message in error.value.message()
    assert_still_serving(client)


@pytest.mark.parametrize(("texts", "message"), [
    (("   ",), "empty or whitespace only"),
    (("fine", "word " * 60), "text #1"),  # over the 32 tokens the engine reads: refused (long_texts "refuse")
])
def test_bad_text_is_refused_as_in_the_two_hop_layout(client, texts, message) -> None:
    errors = []
    for model in ("hop1", "hop2"):
        with pytest.raises(InferenceServerException) as error:
            infer(client, model, {"TEXT": text(*texts)})
        assert error.value.status() == INVALID and message in error.value.message()
        errors.append(error.value.message().split("', ", 1)[-1])  # after "in ensemble 'NAME'"
    assert errors[0] == errors[1], errors  # the same functions, the same words
    assert_still_serving(client)


def _stats(client, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model).model_stats[0]
    return stats.inference_count, stats.execution_count


def test_text_requests_of_one_dynamic_batch_share_one_engine_call(served, client) -> None:
    """Triton 2.51's dynamic batcher puts only requests with the same inputs in one execution (a TEXT request and a
    token-id request are executed apart: measured), so the batch here is TEXT requests; the unit tests show that
    whatever one execution holds, text and ids, runs in one engine call (test_serve_engine_model_text.py)."""
    engine = "slow.v1.engine"
    jobs = {"text1": text("where is my order?"), "text2": text("refund please", "ok"), "bad": text("  ")}
    outcomes: dict[str, object] = {}
    barrier = threading.Barrier(len(jobs))

    def send(name: str, texts: np.ndarray) -> None:
        own = grpcclient.InferenceServerClient(served.grpc_url)
        own.get_model_metadata(engine)  # the channel is up before the race starts
        barrier.wait()
        try:
            outcomes[name] = infer(own, engine, {"TEXT": texts})
        except InferenceServerException as exc:
            outcomes[name] = exc
        own.close()

    before = _stats(client, engine)
    threads = [threading.Thread(target=send, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    after = _stats(client, engine)
    assert isinstance(outcomes["bad"], InferenceServerException) and outcomes["bad"].status() == INVALID
    assert outcomes["text1"]["LABEL"].shape == (1, 1) and outcomes["text2"]["LABEL"].shape == (2, 1)
    assert after[1] - before[1] == 1, (before, after)  # one execution: one tokenizer call, one engine call
