"""4-bit builds on tiny checkpoints: ORT MatMulNBits (int4) and bitsandbytes NF4 served by torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engineforge.build.config import BuildConfig
from engineforge.build.runner import run_build
from engineforge.build.steps import ExportConfig, GraphOptimizeConfig, Int4WeightOnlyConfig, ValidateConfig
from engineforge.engines.engine_spec import EngineSpec
from engineforge.serve import engine_runtime as rt
from engineforge.serve.repository import publish_engine
from tests.helpers.logits import file_logits, torch_logits
from tests.helpers.tiny_bnb import cached_bnb_build, cached_checkpoint_64
from tests.helpers.tiny_checkpoint import EVAL_TEXTS, TINY_LABELS


@pytest.fixture(scope="module")
def checkpoint_64(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return cached_checkpoint_64(tmp_path_factory)


def test_int4_build_has_matmulnbits_that_ort_runs_within_budget(checkpoint_64, tmp_path):
    import onnx

    checkpoint, eval_data = checkpoint_64
    steps = (ExportConfig(), GraphOptimizeConfig(), Int4WeightOnlyConfig(), ValidateConfig(max_accuracy_drop=10.0,
                                                                                           min_agreement=0.9))
    report = run_build(BuildConfig(checkpoint=checkpoint, output_dir=tmp_path / "out", steps=steps,
                                   eval_data=eval_data, intra_op_threads=1))
    assert report.status == "ok" and report.precision == "int4-weight-only"
    details = report.steps[2].details
    # After fusion only the output projections and the FFN are MatMuls; Attention keeps QKV in fp32.
    assert details["quantized_roles"] == {"layer.*/attention/output/dense": 2, "layer.*/intermediate/dense": 2,
                                          "layer.*/output/dense": 2}
    assert details["fp32_weight_ops"] == {"Attention": 2, "Gemm": 2} and 0 < details["int4_weight_fraction"] < 1

    bundle = tmp_path / "out" / "engine"
    graph = onnx.load(str(bundle / "model.onnx"))
    assert sum(n.op_type == "MatMulNBits" for n in graph.graph.node) == 6
    spec = EngineSpec.load(bundle)
    assert (spec.runtime, spec.precision) == ("onnxruntime", "int4-weight-only")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))
    got = file_logits(bundle / "model.onnx", tokenizer, list(EVAL_TEXTS))
    reference = torch_logits(AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).eval(), tokenizer,
                             list(EVAL_TEXTS))
    assert np.isfinite(got).all() and np.abs(got - reference).max() < 0.5  # 4-bit, yet close to fp32
    assert report.validation["agreement"] >= 0.9


def test_int4_without_fusion_also_quantizes_qkv(checkpoint_64, tmp_path):
    checkpoint, eval_data = checkpoint_64
    report = run_build(BuildConfig(checkpoint=checkpoint, output_dir=tmp_path / "out", eval_data=eval_data,
                                   steps=(ExportConfig(), Int4WeightOnlyConfig(symmetric=True, block_size=64))))
    details = report.steps[1].details
    assert details["quantized_nodes"] == 12 and "layer.*/attention/self/query" in details["quantized_roles"]
    assert details["fp32_weight_ops"] == {"Gemm": 2}  # pooler and classifier


def test_bnb_nf4_build_writes_a_bundle_whose_model_loads_and_answers(tmp_path_factory, tmp_path):
    out, report = cached_bnb_build(tmp_path_factory)
    assert report["status"] == "ok" and report["precision"] == "nf4"
    details = report["steps"][0]["details"]
    assert details["skipped_modules"] == {"classifier": "kept full precision"}
    assert details["quantized_linear"] == 2 * 6 + 1  # six Linear per layer, plus the pooler
    assert report["validation"]["agreement"] >= 0.7

    bundle = out / "engine"
    spec = EngineSpec.load(bundle)
    assert (spec.runtime, spec.model_file, spec.precision) == ("torch-bnb", "model", "nf4")
    assert not (bundle / "model.onnx").exists()
    assert json.loads((bundle / "model" / "config.json").read_text())["quantization_config"]["bnb_4bit_quant_type"] \
        == "nf4"
    engine = rt.open_bundle_engine(bundle, spec)
    model = engine.model
    assert type(model.classifier).__name__ == "Linear"
    assert type(model.bert.encoder.layer[0].intermediate.dense).__name__ == "Linear4bit"

    # The bundle answers exactly what the build validated (same saved files, reloaded).
    from transformers import AutoTokenizer

    from engineforge.engines import model_input_names

    tokenizer = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))
    encoded = tokenizer(list(EVAL_TEXTS[:4]), padding=True, return_tensors="np")
    feeds = {n: encoded[n].astype(np.int64) for n in model_input_names(tokenizer)}
    requests = [rt.validate_request_arrays(feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"],
                                           max_positions=spec.max_position_embeddings)]
    (rows,) = rt.run_batch(engine, spec, requests)
    np.testing.assert_allclose(rows.logits, engine.run(feeds), atol=1e-6)
    assert set(rows.labels) <= set(TINY_LABELS)

    # The publish step copied the model directory into the version directory; so does publish_engine.
    assert report["published"]["model_name"] == "tinybnb" and report["steps"][2]["details"]["engine_mb"] > 0
    version_dir = out.parent / "repo" / "tinybnb.v1.engine" / "1"
    assert (version_dir / "model" / "model.safetensors").is_file() and (version_dir / "engine.json").is_file()
    published = publish_engine(bundle, tmp_path / "repo", "bnb")
    assert (tmp_path / "repo" / published.version_models[-1] / "1" / "model" / "config.json").is_file()
