"""The `nf4` preset on the tasks besides text classification (issue 18): a tiny token classifier and tiny sentence
embedders (bitsandbytes' WIDE shapes) build, validate by their task's measure, and a real Triton serves what the
same engine answers in-process.

Before the fix the bnb step reloaded every checkpoint as a sequence classifier (a token classifier came back with a
fresh pooler and [batch, labels] logits: validate failed) and called `save_pretrained` on the embedder's pooling
wrapper (AttributeError)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engineforge.build.checkpoint import load_checkpoint
from engineforge.build.config import BuildConfig
from engineforge.build.presets import preset_steps
from engineforge.build.report import BuildReport
from engineforge.build.runner import run_build
from engineforge.demo.ner_data import NER_EVAL_FILE
from engineforge.engines import TorchEngine, encode, model_input_names
from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import ServerError
from engineforge.ner import STRATEGIES
from engineforge.serve import engine_runtime as rt
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import TritonServer, find_triton
from tests.helpers.in_process import entities_in_process, outputs_one_by_one
from tests.helpers.tiny_families import make_embedding_checkpoint, make_ner_checkpoint, write_pairs

NER_TEXTS = ["where is my order #A1234?", "the coffee grinder from order 44019 arrived broken",
             "you took $49.99 twice on monday", "thanks"]
EMB_TEXTS = ["where is my order #1234?", "I want my money back for the broken headphones", "ok"]
EMBEDDERS = {"bert": {"normalize": True, "pooling": "mean"},  # all-MiniLM's layout
             "mpnet": {"normalize": False, "pooling": "cls"}}  # CLS pooling, no token_type_ids


def _nf4(checkpoint: Path, eval_data: Path, out: Path) -> BuildReport:
    """The nf4 preset as shipped (its default budget), without its publish: the tests publish themselves."""
    steps = tuple(s for s in preset_steps("nf4") if s.step_type != "publish")
    return run_build(BuildConfig(checkpoint=checkpoint, output_dir=out, steps=steps, eval_data=eval_data,
                                 intra_op_threads=1))


@pytest.fixture(scope="module")
def ner(tmp_path_factory) -> tuple[Path, BuildReport]:
    root = tmp_path_factory.mktemp("nf4_ner")
    checkpoint = make_ner_checkpoint(root / "tiny-ner-wide", wide=True)
    return checkpoint, _nf4(checkpoint, NER_EVAL_FILE, root / "out")


@pytest.fixture(scope="module")
def embedders(tmp_path_factory) -> dict[str, tuple[Path, BuildReport]]:
    root = tmp_path_factory.mktemp("nf4_emb")
    data = write_pairs(root / "pairs.jsonl")
    built = {}
    for family, layout in EMBEDDERS.items():
        checkpoint = make_embedding_checkpoint(root / f"tiny-st-{family}-wide", family, wide=True, **layout)
        built[family] = checkpoint, _nf4(checkpoint, data, root / family)
    return built


def _fp32_outputs(checkpoint: Path, texts: list[str], max_length: int) -> np.ndarray:
    _, model, tokenizer = load_checkpoint(checkpoint)
    feeds = encode(tokenizer, texts, max_length, model_input_names(tokenizer))
    return TorchEngine(model, model_input_names(tokenizer)).run(feeds)


@pytest.mark.slow  # training the tiny token classifier takes ~30 s on 2 cores
def test_nf4_token_classifier_keeps_its_head_and_its_entities(ner):
    checkpoint, report = ner
    assert report.status == "ok" and (report.runtime, report.precision) == ("torch-bnb", "nf4")
    assert report.checkpoint["task"] == "token-classification"
    val = report.validation  # the preset's own budget: entity F1 drop <= 1 point, token agreement >= 98 %
    assert val["tokens"] > val["examples"] == 240 and val["agreement"] >= 0.98
    assert val["accuracy_drop"] is not None and val["accuracy_drop"] <= 1.0 and val["f1_vs_reference"] >= 95
    details = next(s for s in report.steps if s.name == "bnb_4bit").details
    assert details["quantized_linear"] == 2 * 6  # six Linear per layer; no pooler in a token classifier
    assert details["skipped_modules"] == {"classifier": "kept full precision"}

    bundle = Path(report.bundle_dir)
    assert json.loads((bundle / "model" / "config.json").read_text())["architectures"] == \
        ["BertForTokenClassification"]
    spec = EngineSpec.load(bundle)
    engine = rt.open_bundle_engine(bundle, spec)
    assert type(engine.model).__name__ == "BertForTokenClassification" and engine.model.bert.pooler is None
    assert type(engine.model.bert.encoder.layer[0].intermediate.dense).__name__ == "Linear4bit"
    # Per-token logits close to the fp32 checkpoint's: the trained head came back, not a fresh one.
    feeds = encode(engine_tokenizer(bundle), NER_TEXTS, spec.max_sequence_length, spec.input_names)
    got, reference = engine.run(feeds), _fp32_outputs(checkpoint, NER_TEXTS, spec.max_sequence_length)
    assert got.shape == reference.shape == (4, feeds["input_ids"].shape[1], len(spec.labels))
    assert np.abs(got - reference).max() < 0.5


def engine_tokenizer(bundle: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))


@pytest.mark.parametrize("family", list(EMBEDDERS))
def test_nf4_embedder_pools_like_fp32_and_validates_on_cosine_and_recall(embedders, family):
    checkpoint, report = embedders[family]
    assert report.status == "ok" and report.runtime == "torch-bnb" and report.checkpoint["task"] == "embeddings"
    val = report.validation  # the preset's own budget: cosine mean >= 0.99, worst >= 0.95, recall@10 drop <= 2
    assert val["cosine_mean"] >= 0.99 and val["cosine_worst"] >= 0.95
    assert val["recall_pairs"] == 6 and val["recall_drop"] is not None and val["recall_drop"] <= 2.0
    assert next(s for s in report.steps if s.name == "bnb_4bit").details["quantized_linear"] > 0

    bundle = Path(report.bundle_dir)
    spec = EngineSpec.load(bundle)
    layout = EMBEDDERS[family]
    assert spec.task == "embeddings" and spec.embedding_dim == 64 and spec.output_name == "embeddings"
    assert {k: spec.pooling[k] for k in ("mode", "normalize")} == \
        {"mode": layout["pooling"], "normalize": layout["normalize"]}
    saved = json.loads((bundle / "model" / "pooling.json").read_text())  # the engine directory says how it pools
    assert (saved["mode"], saved["normalize"]) == (layout["pooling"], layout["normalize"])
    assert ("token_type_ids" in spec.input_names) == (family == "bert")
    engine = rt.open_bundle_engine(bundle, spec)
    assert any(type(m).__name__ == "Linear4bit" for m in engine.model.modules())
    got = outputs_one_by_one(bundle, EMB_TEXTS)
    reference = _fp32_outputs(checkpoint, EMB_TEXTS, spec.max_sequence_length)
    cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    assert got.shape == (3, 64) and cosine.min() > 0.99
    norms = np.linalg.norm(got, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4) == layout["normalize"]  # Normalize travels with the engine


@pytest.fixture(scope="module")
def served(ner, embedders, tmp_path_factory) -> Iterator[EngineforgeClient]:
    try:
        find_triton()
    except ServerError as exc:
        pytest.skip(str(exc))
    repo = tmp_path_factory.mktemp("serve_nf4") / "repo"
    # Two names, four python stubs (each imports torch + bitsandbytes): the mpnet embedder is checked in-process.
    publish_engine(Path(ner[1].bundle_dir), repo, "ner_nf4", max_batch_size=8)
    publish_engine(Path(embedders["bert"][1].bundle_dir), repo, "emb_nf4", max_batch_size=8)
    with TritonServer(repo, log_file=repo.parent / "tritonserver.log", startup_timeout_s=180) as server, \
            EngineforgeClient(server.grpc_url, timeout_s=60) as client:
        yield client


@pytest.mark.triton
@pytest.mark.slow
def test_served_nf4_entities_equal_in_process(served, ner):
    expected, expected_tags = entities_in_process(Path(ner[1].bundle_dir), NER_TEXTS)
    for strategy in STRATEGIES:
        assert served.entities(NER_TEXTS, model="ner_nf4", strategy=strategy) == [row[strategy] for row in expected]
    found, tags = served.entities(NER_TEXTS, model="ner_nf4", with_tags=True)
    assert tags == expected_tags and any(found), found  # the tiny model does find entities
    for text, entities in zip(NER_TEXTS, found, strict=True):  # spans index the text itself
        assert all(text[e["start"]:e["end"]] == e["text"] for e in entities)


@pytest.mark.triton
@pytest.mark.slow
def test_served_nf4_embeddings_equal_in_process(served, embedders):
    bundle = Path(embedders["bert"][1].bundle_dir)
    got = served.embed(EMB_TEXTS, model="emb_nf4")  # one request, padded and merged server-side
    assert served.task("emb_nf4") == "embeddings"
    spec = EngineSpec.load(bundle)
    batch = rt.open_bundle_engine(bundle, spec).run(
        encode(engine_tokenizer(bundle), EMB_TEXTS, spec.max_sequence_length, spec.input_names))
    np.testing.assert_allclose(got, batch, atol=1e-5)
    alone = outputs_one_by_one(bundle, EMB_TEXTS)  # padding must not move a pooled embedding
    np.testing.assert_allclose(got, alone, atol=1e-4)
