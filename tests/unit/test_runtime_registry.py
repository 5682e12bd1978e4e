"""The runtime registry's facts are what build and serving read, and an engine.json's runtime plugin runs only a
function marked for it."""

from __future__ import annotations

import sys
import types

import pytest

from engineforge.engines import cpu_candidate_names, load_engine, registry, runtime_info
from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import ConfigError, EngineLoadError
from engineforge.serve.model_layout import build_model_configs
from engineforge.serve.serving_defaults import derive_serving_settings


def test_each_runtime_carries_its_facts():
    assert cpu_candidate_names() == ("onnxruntime", "openvino")
    facts = {name: (runtime_info(name).bundle_file, runtime_info(name).device)
             for name in ("onnxruntime", "openvino", "torch-bnb", "tensorrt")}
    assert facts == {"onnxruntime": ("model.onnx", "CPU"), "openvino": ("model.onnx", "CPU"),
                     "torch-bnb": ("model", "CPU"), "tensorrt": ("model.plan", "GPU")}
    assert runtime_info("onnxruntime").quiet_options == {"session.intra_op.allow_spinning": "0",
                                                         "session.inter_op.allow_spinning": "0"}


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(registry, "_RUNTIMES", dict(registry._RUNTIMES))


def test_serving_reads_device_and_instances_from_the_runtime(isolated_registry):
    registry.register_runtime("toy-gpu", model_kind=registry.MODEL_FILE, description="toy", device=registry.GPU,
                              instances=2, instances_reason="2 per GPU: toy")(lambda path, threads: None)
    spec = EngineSpec(labels=("a", "b"), runtime="toy-gpu", model_file="model.bin")
    settings = derive_serving_settings(spec, cores=16)
    assert (settings.instances, settings.reasons["instances"]) == (2, "2 per GPU: toy")
    engine = build_model_configs("clf", spec, version=1, settings=settings)["engine"]
    assert (engine.instance_group.count, engine.instance_group.kind) == (2, "GPU")


def test_a_loader_without_session_options_refuses_them(isolated_registry, tmp_path):
    registry.register_runtime("toy", model_kind=registry.MODEL_FILE, description="toy")(lambda path, threads: "ok")
    (tmp_path / "m").write_bytes(b"")
    assert load_engine(tmp_path / "m", "toy", 1) == "ok"
    with pytest.raises(EngineLoadError, match="takes no session options"):
        load_engine(tmp_path / "m", "toy", 1, options={"x": "1"})


def _plugin_module(monkeypatch, marked: bool) -> str:
    module = types.ModuleType("toy_runtime_plugin")
    calls = []

    def register() -> None:
        calls.append(1)
        registry.register_runtime("toy-plugin", model_kind=registry.MODEL_FILE, description="toy",
                                  plugin="toy_runtime_plugin:register")(lambda path, threads: None)

    module.register = registry.runtime_plugin(register) if marked else register
    module.calls = calls
    monkeypatch.setitem(sys.modules, "toy_runtime_plugin", module)
    return "toy_runtime_plugin:register"


def test_engine_json_registers_its_runtime_through_a_marked_plugin(isolated_registry, monkeypatch):
    plugin = _plugin_module(monkeypatch, marked=True)
    spec = EngineSpec.from_dict({"labels": ["a"], "runtime": "toy-plugin", "runtime_plugin": plugin})
    assert spec.runtime_plugin == plugin and sys.modules["toy_runtime_plugin"].calls == [1]
    assert spec.to_dict()["runtime_plugin"] == plugin
    assert "runtime_plugin" not in EngineSpec(labels=("a",)).to_dict()  # engineforge's own runtimes need none


@pytest.mark.parametrize(("plugin", "message"), [
    ("os.system", "is not 'module:function'"),
    ("no_such_module_here:register", "ModuleNotFoundError"),
    ("toy_runtime_plugin:register", "is not marked @runtime_plugin"),
])
def test_a_runtime_plugin_runs_only_a_marked_function(isolated_registry, monkeypatch, plugin, message):
    _plugin_module(monkeypatch, marked=False)
    with pytest.raises(ConfigError, match=message):
        EngineSpec.from_dict({"labels": ["a"], "runtime": "toy-plugin", "runtime_plugin": plugin})
    assert sys.modules["toy_runtime_plugin"].calls == []
