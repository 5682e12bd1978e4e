"""Adding a runtime is one module plus one registration: this file alone defines toy runtimes and registers them; a
build chooses one as a CPU candidate, and a real tritonserver serves a bundle in the other with the answers the same
runtime gives in this process.

The toy runtime ("toy-npz") is a bag-of-embeddings classifier in numpy: its engine file is `model.npz` (one row of
logits per token id, averaged over the attention mask), nothing ONNX Runtime, OpenVINO, torch or TensorRT could
read. The Triton python-backend stub is another process: it registers the runtime by calling `register` here, the
`runtime_plugin` engine.json records, and finds this module through PYTHONPATH (as a user's own runtime module
would be found where it is installed).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from engineforge.engines import load_engine, registry
from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import ServerError
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import TritonServer, find_triton
from tests.helpers.in_process import probabilities_one_by_one
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401

TOY = "toy-npz"
TOY_CPU = "toy-ort"  # a CPU candidate: ONNX Runtime on the exported graph, shipped under its own file name
TEXTS = ["where is my order #1234?", "I want my money back for the broken headphones", "ok",
         "my account got locked after too many attempts, please help"]


class ToyEngine:
    runtime = TOY
    output_names = ("logits",)

    def __init__(self, path: Path) -> None:
        with np.load(path) as data:
            self.table = data["table"].astype(np.float32)  # [vocab, labels]
            self.input_names = tuple(str(n) for n in data["input_names"])

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        mask = feeds["attention_mask"].astype(np.float32)[..., None]  # padding contributes nothing
        rows = self.table[feeds["input_ids"]] * mask
        return rows.sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)

    def settings(self) -> dict[str, str]:
        return {"runtime": TOY}


def load_toy(path: Path, threads: int) -> ToyEngine:
    del threads  # numpy on one thread
    return ToyEngine(path)


@registry.runtime_plugin
def register() -> None:
    """The one registration: the loader and the runtime's facts."""
    registry.register_runtime(TOY, model_kind=registry.MODEL_FILE, description="toy numpy bag of embeddings",
                              bundle_file="model.npz", plugin=f"{__name__}:register")(load_toy)


@pytest.fixture(scope="module")
def toy_runtime() -> Iterator[None]:
    """Registered for this module only: the registry is restored afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "_RUNTIMES", dict(registry._RUNTIMES))
        register()
        yield


def load_toy_ort(path: Path, threads: int) -> object:
    engine = load_engine(path, "onnxruntime", threads)
    engine.runtime = TOY_CPU  # type: ignore[misc]
    return engine


def test_a_build_chooses_a_registered_cpu_candidate_and_ships_it_under_its_file_name(
        tiny_checkpoint, tiny_eval_data, tmp_path, monkeypatch):
    from engineforge.build.config import BuildConfig
    from engineforge.build.runner import run_build
    from engineforge.build.steps import ExportConfig, GraphOptimizeConfig, SelectRuntimeConfig, ValidateConfig

    monkeypatch.setattr(registry, "_RUNTIMES", dict(registry._RUNTIMES))
    registry.register_runtime(TOY_CPU, model_kind=registry.MODEL_ONNX, description="toy: ORT under another name",
                              bundle_file="model.toy.onnx", cpu_candidate=True)(load_toy_ort)
    assert TOY_CPU in SelectRuntimeConfig().candidates  # one registration makes it a candidate of every build
    report = run_build(BuildConfig(checkpoint=tiny_checkpoint, output_dir=tmp_path / "out", eval_data=tiny_eval_data,
                                   steps=(ExportConfig(), GraphOptimizeConfig(),
                                          SelectRuntimeConfig(candidates=(TOY_CPU,), iterations=5), ValidateConfig())))
    select = report.step("select_runtime").details
    assert select["chosen"] == TOY_CPU and report.step("validate").details["runtime"] == TOY_CPU
    bundle = tmp_path / "out" / "engine"
    spec = EngineSpec.load(bundle)
    assert (spec.runtime, spec.model_file) == (TOY_CPU, "model.toy.onnx")
    assert (bundle / "model.toy.onnx").is_file() and not (bundle / "model.onnx").exists()


@pytest.fixture(scope="module")
def toy_bundle(toy_runtime: None, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The tiny bundle's tokenizer and labels with a toy engine instead of its ONNX graph."""
    bundle = tmp_path_factory.mktemp("toy") / "bundle"
    shutil.copytree(tiny_bundle / "tokenizer", bundle / "tokenizer")
    spec = EngineSpec.load(tiny_bundle)
    table = np.random.default_rng(0).normal(size=(spec.vocab_size, spec.num_labels)).astype(np.float32)
    np.savez(bundle / "model.npz", table=table, input_names=np.array(spec.input_names))
    data = spec.to_dict() | {"runtime": TOY, "model_file": "model.npz"}
    EngineSpec.from_dict(data, source="toy engine.json").save(bundle)
    return bundle


def test_the_toy_runtime_writes_its_plugin_and_opens_in_process(toy_bundle):
    spec = EngineSpec.load(toy_bundle)
    assert (spec.runtime, spec.runtime_plugin) == (TOY, f"{__name__}:register")
    assert TOY not in registry.cpu_candidate_names()  # a serving-only runtime: builds do not time it
    engine = load_engine(toy_bundle / "model.npz", TOY, 1)
    ids = np.array([[1, 5, 0]], dtype=np.int64)
    logits = engine.run({"input_ids": ids, "attention_mask": np.array([[1, 1, 0]], dtype=np.int64)})
    np.testing.assert_allclose(logits, (engine.table[1] + engine.table[5])[None] / 2, rtol=1e-6)


@pytest.mark.triton
def test_triton_serves_the_toy_runtime_as_in_process(toy_bundle, tmp_path, monkeypatch):
    try:
        find_triton()
    except ServerError as exc:
        pytest.skip(str(exc))
    published = publish_engine(toy_bundle, tmp_path / "repo", "toy", max_batch_size=8)
    version_dir = tmp_path / "repo" / published.version_models[-1] / str(published.version)
    assert (version_dir / "model.npz").is_file()  # the runtime's bundle file, published under its own name
    # The stub imports this module to register the runtime: here (for `register`) and the repository root (for
    # the tests.helpers imports above) must be on its path.
    here, root = Path(__file__).resolve().parent, Path(__file__).resolve().parents[2]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(here), str(root), os.environ.get("PYTHONPATH", "")]))
    with TritonServer(tmp_path / "repo", log_file=tmp_path / "tritonserver.log", startup_timeout_s=120) as server, \
            EngineforgeClient(server.grpc_url, timeout_s=30) as client:
        predictions = client.classify(TEXTS, model="toy")  # one request: padded and merged server-side
        config = client._client.get_model_config("toy_engine").config
    spec = EngineSpec.load(toy_bundle)
    got = np.array([[p.probabilities[label] for label in spec.labels] for p in predictions])
    expected = probabilities_one_by_one(toy_bundle, TEXTS)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [p.label for p in predictions] == [spec.labels[i] for i in expected.argmax(axis=1)]
    assert config.parameters["runtime"].string_value == TOY
