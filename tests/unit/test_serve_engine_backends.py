"""Serving through the engine layer: engine.json runtimes, bundle checks, OpenVINO and torch-bnb loading."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import ConfigError, EngineLoadError, RepositoryError
from engineforge.serve import engine_runtime as rt
from engineforge.serve.repository import check_bundle
from tests.helpers.tiny_engine import reference_logits, tiny_bundle  # noqa: F401

LABELS = ("a", "b", "c")


@pytest.mark.parametrize(("runtime", "directory"), [("onnxruntime", False), ("openvino", False), ("torch-bnb", True)])
def test_spec_accepts_the_servable_runtimes(runtime, directory):
    spec = EngineSpec(labels=LABELS, runtime=runtime, model_file="model" if directory else "model.onnx")
    assert spec.model_is_directory is directory
    assert EngineSpec.from_dict(spec.to_dict()) == spec


def test_spec_refuses_other_runtimes_naming_the_choices():
    with pytest.raises(ConfigError, match=r"'runtime' is 'tvm'; servable runtimes are 'onnxruntime', "
                                          r"'openvino', 'tensorrt', 'torch-bnb'"):
        EngineSpec(labels=LABELS, runtime="tvm")


def test_a_tensorrt_spec_carries_its_metadata_and_no_other_does():
    with pytest.raises(ConfigError, match=r"field 'tensorrt' must be the TensorRT metadata object exactly when"):
        EngineSpec(labels=LABELS, runtime="tensorrt", model_file="model.plan")
    with pytest.raises(ConfigError, match=r"field 'tensorrt'"):
        EngineSpec(labels=LABELS, tensorrt={"flavour": "tensorrt"})
    meta = {"flavour": "tensorrt", "version": "11.4.0.106", "profiles": [{"input_ids": {"min": [1, 1],
            "opt": [8, 64], "max": [16, 64]}}]}
    spec = EngineSpec(labels=LABELS, runtime="tensorrt", model_file="model.plan", tensorrt=meta,
                      max_position_embeddings=512)
    assert spec.max_request_tokens == 64  # the profile, not the model's 512 positions, limits a request
    assert EngineSpec.from_dict(spec.to_dict()) == spec and spec.to_dict()["tensorrt"] == meta


def test_torch_bnb_bundle_needs_a_model_directory(tiny_bundle, tmp_path):  # noqa: F811
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    EngineSpec.from_dict(EngineSpec.load(bundle).to_dict() | {"runtime": "torch-bnb", "model_file": "model"}).save(
        bundle)
    with pytest.raises(RepositoryError, match=r"lacks the torch-bnb model directory model/.*save_pretrained"):
        check_bundle(bundle)


def test_openvino_engine_matches_onnxruntime_in_process(tiny_bundle):  # noqa: F811
    spec = EngineSpec.from_dict(EngineSpec.load(tiny_bundle).to_dict() | {"runtime": "openvino"})
    engine = rt.open_bundle_engine(tiny_bundle, spec)
    assert engine.input_names == spec.input_names
    rng = np.random.default_rng(0)
    for batch, seq in ((1, 5), (3, 17)):  # dynamic shapes: one compiled model serves both
        ids = rng.integers(1000, 20000, (batch, seq))
        mask = np.ones_like(ids)
        mask[0, seq // 2:] = 0
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        # Loose: OpenVINO's CPU plugin runs "fp32" models in bf16 on CPUs with AVX512-BF16 (like this one).
        np.testing.assert_allclose(engine.run(feeds), reference_logits(tiny_bundle, ids, mask), atol=3e-2)


def test_openvino_names_a_missing_engine_file(tiny_bundle, tmp_path):  # noqa: F811
    spec = EngineSpec.from_dict(EngineSpec.load(tiny_bundle).to_dict() | {"runtime": "openvino"})
    with pytest.raises(EngineLoadError, match="engine file missing"):
        rt.open_bundle_engine(tmp_path, spec)


def test_torch_bnb_refuses_a_model_that_is_not_quantized(tiny_checkpoint: Path, tmp_path):
    shutil.copytree(tiny_checkpoint, tmp_path / "model")
    spec = EngineSpec(labels=("order_status", "refund_request", "account_access"), runtime="torch-bnb",
                      model_file="model", intra_op_threads=0)
    with pytest.raises(EngineLoadError, match="not a bitsandbytes model"):
        rt.open_bundle_engine(tmp_path, spec)
