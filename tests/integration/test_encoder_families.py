"""Every encoder family, built from a tiny config with a ~100-token WordPiece vocabulary, through the real
exporter, ONNX Runtime / OpenVINO, the quantizers, pruning + distillation, and served by a real Triton.

The vocabulary is far smaller than BERT's, so any synthetic timing or calibration input that assumes BERT ids
(the old `select_runtime` probe fed id 1850) fails here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engineforge.build.config import BuildConfig
from engineforge.build.presets import preset_steps
from engineforge.build.report import BuildReport
from engineforge.build.runner import run_build
from engineforge.build.steps import (
    DistillConfig,
    ExportConfig,
    PruneConfig,
    SelectRuntimeConfig,
    StaticInt8Config,
    ValidateConfig,
)
from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import InferenceRequestError, ServerError
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import TritonServer, find_triton
from tests.helpers.in_process import probabilities_one_by_one
from tests.helpers.tiny_checkpoint import EVAL_TEXTS
from tests.helpers.tiny_families import BERT_LIKE, NEW_FAMILIES, make_family_build_inputs, word_vocabulary

ALL_FAMILIES = NEW_FAMILIES + BERT_LIKE

NO_TOKEN_TYPES = {"distilbert", "deberta-v2", "mpnet", "modernbert"}
FUSED_ATTENTION = {"distilbert", "roberta", "xlm-roberta", "electra"}  # ORT fuses every layer's attention
TEXTS = ["where is my order #1234?", "I want my money back for the broken headphones", "ok",
         "my account got locked after too many attempts, please help"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("families")
    return {family: make_family_build_inputs(root, family) for family in ALL_FAMILIES}


def _build(inputs: tuple[Path, Path], out: Path, steps: tuple) -> BuildReport:
    checkpoint, eval_data = inputs
    steps = tuple(s for s in steps if s.step_type != "publish")
    return run_build(BuildConfig(checkpoint=checkpoint, output_dir=out, steps=steps, eval_data=eval_data,
                                 calibration_data=eval_data, train_data=eval_data))


def _details(report: BuildReport, name: str) -> dict:
    return next(s.details for s in report.steps if s.name == name)


@pytest.fixture(scope="module")
def static_builds(inputs, tmp_path_factory) -> dict[str, BuildReport]:
    root = tmp_path_factory.mktemp("static")
    return {family: _build(inputs[family], root / family, preset_steps("int8-static")) for family in ALL_FAMILIES}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_int8_build_matches_pytorch_and_reports_its_fusions(inputs, family, tmp_path):
    report = _build(inputs[family], tmp_path / "out", preset_steps("int8"))
    assert report.status == "ok" and report.checkpoint["model_type"] == family
    assert _details(report, "export")["max_abs_diff_vs_torch"] < 1e-4
    optimize = _details(report, "graph_optimize")
    if family in FUSED_ATTENTION:
        assert optimize["fused_ops"]["Attention"] == 2 and optimize["missing_fusions"] == []
    elif family in ("deberta-v2", "mpnet", "modernbert"):
        assert optimize["attention_fusion"].startswith("not available: ") and "Attention" not in optimize["fused_ops"]
    assert report.validation["agreement"] >= 0.9 and _details(report, "dynamic_int8")["quantized_nodes"] > 0
    spec = EngineSpec.load(tmp_path / "out" / "engine")
    assert ("token_type_ids" in spec.input_names) == (family not in NO_TOKEN_TYPES)
    assert spec.vocab_size == len(word_vocabulary()) < 2000


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_static_int8_with_runtime_selection_on_a_small_vocabulary(static_builds, family):
    report = static_builds[family]
    assert report.status == "ok"
    candidates = _details(report, "select_runtime")["candidates"]
    assert {c["runtime"] for c in candidates} == {"onnxruntime", "openvino"}
    assert all(c["status"] == "ok" and c["median_ms_1x128"] > 0 and c["profile_ms_per_request"] > 0 for c in candidates)
    assert report.validation["agreement"] >= 0.9


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_int4_weight_only_and_nf4_where_the_shapes_allow(inputs, family, tmp_path):
    report = _build(inputs[family], tmp_path / "int4", preset_steps("int4-weight-only"))
    assert report.status == "ok" and _details(report, "int4_weight_only")["quantized_nodes"] > 0
    wide = make_family_build_inputs(tmp_path, family, wide=True)  # bitsandbytes needs 64-wide Linear inputs
    report = _build(wide, tmp_path / "nf4", preset_steps("nf4"))
    assert report.status == "ok" and report.runtime == "torch-bnb"
    assert _details(report, "bnb_4bit")["quantized_linear"] > 0 and report.validation["agreement"] >= 0.9


@pytest.mark.tensorrt
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_tensorrt_fp16_engines_build_for_every_family(inputs, family, tmp_path):
    report = _build(inputs[family], tmp_path / "trt", preset_steps("trt-fp16"))
    assert report.status == "ok" and report.runtime == "tensorrt"
    spec = EngineSpec.load(tmp_path / "trt" / "engine")
    assert sorted(t["name"] for t in spec.tensorrt["inputs"]) == sorted(spec.input_names)


def test_distilbert_prunes_heads_and_neurons_then_recovers(inputs, tmp_path):
    report = _build(inputs["distilbert"], tmp_path / "out", preset_steps("fast-cpu"))
    assert report.status == "ok"
    pruned = _details(report, "prune")
    assert pruned["heads_per_layer_before"] == [3, 3] and max(pruned["heads_per_layer"]) < 3
    assert sum(pruned["ffn_per_layer"]) < sum(pruned["ffn_per_layer_before"])
    assert _details(report, "export")["max_abs_diff_vs_torch"] < 1e-4  # the sliced model exports exactly


@pytest.mark.parametrize("family", ["mpnet", "deberta-v2"])
def test_ffn_only_pruning_where_heads_cannot_be_pruned(inputs, family, tmp_path):
    steps = (PruneConfig(head_sparsity=0.0, ffn_sparsity=0.5, num_batches=1, batch_size=12),
             DistillConfig(epochs=2, patience=0), ExportConfig(), StaticInt8Config(), SelectRuntimeConfig(),
             ValidateConfig(max_accuracy_drop=0.5, min_agreement=0.5))
    report = _build(inputs[family], tmp_path / "out", steps)
    assert report.status == "ok"
    pruned = _details(report, "prune")
    assert pruned["heads_per_layer"] == pruned["heads_per_layer_before"] == [3, 3]
    assert sum(pruned["ffn_per_layer"]) == sum(pruned["ffn_per_layer_before"]) // 2
    assert _details(report, "export")["max_abs_diff_vs_torch"] < 1e-4


def _model_name(family: str) -> str:
    return family.replace("-", "_")


@pytest.fixture(scope="module")
def client(static_builds, tmp_path_factory) -> Iterator[EngineforgeClient]:
    try:
        find_triton()
    except ServerError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("serve_families")
    for family, report in static_builds.items():
        publish_engine(Path(report.bundle_dir), root / "repo", _model_name(family), max_batch_size=8)
    with TritonServer(root / "repo", log_file=root / "tritonserver.log", startup_timeout_s=180) as server, \
            EngineforgeClient(server.grpc_url, timeout_s=30) as connected:
        yield connected


@pytest.mark.triton
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_family_serves_text_and_token_ids_over_triton(client, static_builds, family):
    bundle = Path(static_builds[family].bundle_dir)
    spec = EngineSpec.load(bundle)
    predictions = client.classify(TEXTS + list(EVAL_TEXTS[:2]), model=_model_name(family))
    got = np.array([[p.probabilities[label] for label in spec.labels] for p in predictions])
    np.testing.assert_allclose(got, probabilities_one_by_one(bundle, TEXTS + list(EVAL_TEXTS[:2])), atol=1e-4)
    vocab = len(word_vocabulary())
    ids = np.array([[2, vocab + 5, 3]], dtype=np.int64)  # beyond this model's own vocabulary
    with pytest.raises(InferenceRequestError, match=rf"input_ids must be in \[0, {vocab}\)"):
        client.classify_token_ids(ids, np.ones_like(ids), model=_model_name(family))
    (again,) = client.classify(TEXTS[:1], model=_model_name(family))  # and the server keeps serving
    assert again.label == predictions[0].label
