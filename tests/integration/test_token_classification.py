"""Token classification (NER) end to end: a tiny BERT token classifier trained on the NER demo's annotated
messages (its own few-hundred-token vocabulary), built with static int8 + runtime selection and judged by entity
F1 and per-token agreement, then served by a real Triton: entities with character spans for every aggregation
strategy, raw per-token tags, the client, `engineforge infer` and the load tester."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engineforge.build.config import BuildConfig
from engineforge.build.pipeline import check_build
from engineforge.build.presets import preset_steps
from engineforge.build.report import BuildReport
from engineforge.build.runner import run_build
from engineforge.demo.ner_data import NER_EVAL_FILE, NER_TRAIN_FILE
from engineforge.engines.engine_spec import EngineSpec
from engineforge.engines.tokenize_runtime import load_tokenizer, tokenize_batch
from engineforge.errors import InferenceRequestError, ServerError, UnsupportedStepError
from engineforge.ner import STRATEGIES
from engineforge.serve import engine_runtime as rt
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.ner_runtime import tagged_outputs
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import TritonServer, find_triton
from tests.helpers.tiny_families import make_ner_checkpoint

TEXTS = ["where is my order #A1234?", "the coffee grinder from order 44019 arrived broken",
         "you took $49.99 twice on monday", "thanks"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_ner_checkpoint(tmp_path_factory.mktemp("ner") / "tiny-ner")


@pytest.fixture(scope="module")
def built(checkpoint, tmp_path_factory) -> BuildReport:
    steps = tuple(s for s in preset_steps("int8-static") if s.step_type != "publish")
    return run_build(BuildConfig(checkpoint=checkpoint, output_dir=tmp_path_factory.mktemp("build") / "out",
                                 steps=steps, eval_data=NER_EVAL_FILE, calibration_data=NER_TRAIN_FILE))


def test_static_int8_build_is_judged_by_entity_f1_and_token_agreement(built):
    val = built.validation
    assert built.status == "ok" and built.checkpoint["task"] == "token-classification"
    assert val["reference_f1"] > 20 and val["engine_f1"] is not None and val["accuracy_drop"] <= 1.0
    assert val["agreement"] >= 0.98 and val["tokens"] > val["examples"] == 240
    candidates = next(s for s in built.steps if s.name == "select_runtime").details["candidates"]
    assert {c["runtime"] for c in candidates if c["status"] == "ok"} == {"onnxruntime", "openvino"}
    markdown = (Path(built.bundle_dir).parent / "build_report.md").read_text()
    assert "entity F1, fp32 PyTorch" in markdown and "per-token tag agreement" in markdown
    spec = EngineSpec.load(Path(built.bundle_dir))
    assert spec.task == "token-classification" and spec.labels[0] == "O" and len(spec.labels) == 9


def test_pruning_presets_are_refused_for_token_classifiers_before_any_work(checkpoint, tmp_path):
    config = BuildConfig(checkpoint=checkpoint, output_dir=tmp_path / "out", steps=preset_steps("fast-cpu"),
                         eval_data=NER_EVAL_FILE, train_data=NER_TRAIN_FILE, calibration_data=NER_TRAIN_FILE,
                         preset="fast-cpu")
    with pytest.raises(UnsupportedStepError, match=r"cannot build a token-classification model: pruning of token "
                                                   r"classifiers (?s:.*)Presets that work for bert "
                                                   r"token-classification: fp32, max-accuracy, int8, int8-static"
                                                   r"(?s:.*)Fix: use preset 'int8-static'"):
        check_build(config)
    assert not (tmp_path / "out").exists()


def _in_process(bundle: Path, texts: list[str]) -> tuple[list[dict], list[list[str]]]:
    spec = EngineSpec.load(bundle)
    arrays = tokenize_batch(load_tokenizer(bundle / "tokenizer"), texts, spec.max_sequence_length, with_offsets=True)
    request = rt.RequestArrays(arrays["input_ids"], arrays["attention_mask"], arrays["token_type_ids"])
    (rows,) = rt.run_batch(rt.open_bundle_engine(bundle, spec), spec, [request])
    entities, tags = tagged_outputs(rows, spec.labels, arrays["attention_mask"], arrays["offsets"],
                                    arrays["word_ids"], texts)
    return [json.loads(e) for e in entities], [json.loads(t) for t in tags]


@pytest.fixture(scope="module")
def served(built, tmp_path_factory) -> Iterator[tuple[EngineforgeClient, str]]:
    try:
        find_triton()
    except ServerError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("serve_ner")
    publish_engine(Path(built.bundle_dir), root / "repo", "ner", max_batch_size=8)
    # the older two-hop layout of the same bundle, served beside the one-hop default, to compare answers
    publish_engine(Path(built.bundle_dir), root / "repo", "ner_hop2", max_batch_size=8, text_path="two-hop")
    with TritonServer(root / "repo", log_file=root / "tritonserver.log", startup_timeout_s=180) as server, \
            EngineforgeClient(server.grpc_url, timeout_s=30) as client:
        yield client, server.grpc_url


@pytest.mark.triton
def test_served_entities_match_in_process_for_every_strategy(served, built):
    client, _ = served
    expected, expected_tags = _in_process(Path(built.bundle_dir), TEXTS)
    for strategy in STRATEGIES:
        got = client.entities(TEXTS, model="ner", strategy=strategy)
        assert got == [row[strategy] for row in expected]
    found, tags = client.entities(TEXTS, model="ner", with_tags=True)
    assert tags == expected_tags
    for text, entities in zip(TEXTS, found, strict=True):  # spans index the text itself
        assert all(text[e["start"]:e["end"]] == e["text"] and e["label"] in {"ORDER", "PRODUCT", "DATE", "AMOUNT"}
                   for e in entities)
    assert any(e["label"] == "ORDER" for e in found[0]), found


@pytest.mark.triton
def test_one_hop_entities_equal_the_two_hop_layouts(served):
    client, _ = served
    outputs = ("LOGITS", "ENTITIES", "TOKEN_LABELS", "VERSION")
    for text in (TEXTS, TEXTS[1:2]):  # one request of several texts, and one alone (its own length)
        raw = np.array([[t.encode()] for t in text], dtype=object)
        one, two = (client.infer(model, {"TEXT": raw}, outputs) for model in ("ner", "ner_hop2"))
        np.testing.assert_array_equal(one["LOGITS"], two["LOGITS"])
        assert one["ENTITIES"].tolist() == two["ENTITIES"].tolist()
        assert one["TOKEN_LABELS"].tolist() == two["TOKEN_LABELS"].tolist()
    with pytest.raises(InferenceRequestError, match="OFFSETS describe token ids, yet the request carries TEXT alone"):
        client.infer("ner.v1.engine", {"TEXT": np.array([[b"order 44019"]], dtype=object),
                                       "OFFSETS": np.zeros((1, 3, 2), np.int64)}, ("TOKEN_LABELS",))
    assert client.entities(TEXTS[:1], model="ner")  # still serving


@pytest.mark.triton
def test_token_ids_alone_and_bad_extras_over_grpc(served):
    client, _ = served
    ids = np.array([[2, 10, 11, 12, 3]], dtype=np.int64)
    result = client.infer("ner_engine", {"INPUT_IDS": ids, "ATTENTION_MASK": np.ones_like(ids)},
                          ("LOGITS", "TOKEN_LABELS", "ENTITIES"))
    assert result["LOGITS"].shape == (1, 5, 9) and len(json.loads(result["TOKEN_LABELS"][0, 0])) == 5
    assert set(json.loads(result["ENTITIES"][0, 0])) == set(STRATEGIES)
    with pytest.raises(InferenceRequestError, match=r"OFFSETS must be integers of shape \[1, 5, 2\]"):
        client.infer("ner_engine", {"INPUT_IDS": ids, "ATTENTION_MASK": np.ones_like(ids),
                                    "OFFSETS": np.zeros((1, 4, 2), np.int64)}, ("TOKEN_LABELS",))
    with pytest.raises(InferenceRequestError, match="serves token-classification, not text-classification"):
        client.classify(TEXTS, model="ner")
    assert client.entities(TEXTS[:1], model="ner")  # still serving


@pytest.mark.triton
def test_infer_and_loadtest_drive_the_ner_ensemble(served, capsys, tmp_path):
    from engineforge.cli import main as engineforge

    _, url = served
    assert engineforge(["infer", "--url", url, "--model", "ner", TEXTS[0]]) == 0
    out = capsys.readouterr().out
    assert out.startswith(TEXTS[0]) and "ORDER" in out
    assert engineforge(["infer", "--url", url, "--model", "ner", "--json", TEXTS[1]]) == 0
    assert set(json.loads(capsys.readouterr().out)[0]["entities"]) == set(STRATEGIES)
    for mode, model in (("text", "ner"), ("tokens", "ner_engine")):
        assert engineforge(["loadtest", "--url", url, "--model", model, "--mode", mode, "--concurrency", "1",
                            "--duration", "1", "--warmup", "0.5", "--out", str(tmp_path / mode)]) == 0
        level = json.loads(next((tmp_path / mode).glob("*.json")).read_text())["levels"][0]["metrics"]
        assert level["errors"] == 0 and level["completed"] > 0
