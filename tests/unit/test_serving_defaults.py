"""Derived serving settings, model warmup in the generated config.pbtxt (re-parsed with Triton's schema), and the
warmup validation errors."""

from __future__ import annotations

import argparse
import struct
from types import SimpleNamespace

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from engineforge.build.report import StepRecord
from engineforge.build.steps.publish import PublishConfig
from engineforge.commands.tune import add_parser, run, tune
from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import ConfigError, RepositoryError
from engineforge.serve.model_config import EnsembleStep, ModelConfig, TensorSpec, WarmupInput, WarmupSample
from engineforge.serve.model_layout import build_model_configs
from engineforge.serve.publish_step import _measured_latency_ms
from engineforge.serve.repository import publish_engine
from engineforge.serve.serving_defaults import (
    MAX_CPU_INSTANCES,
    WARMUP_TEXT,
    ServingSettings,
    available_cores,
    derive_serving_settings,
)
from engineforge.serve.tune_report import LevelStats, Trial, TrialSettings, pick_best
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401

SPEC = EngineSpec(labels=["a", "b"], max_sequence_length=64, intra_op_threads=2, build_id="b1")


def parse(text: str) -> pb.ModelConfig:
    return text_format.Parse(text, pb.ModelConfig())


@pytest.mark.parametrize(("cores", "threads", "instances"), [(2, 2, 1), (8, 2, 4), (64, 2, MAX_CPU_INSTANCES),
                                                             (3, 2, 1), (1, 4, 1), (16, 0, 1), (6, 1, 4)])
def test_instances_from_cores_and_threads(cores: int, threads: int, instances: int):
    spec = EngineSpec(labels=["a"], intra_op_threads=threads)
    settings = derive_serving_settings(spec, cores=cores)
    assert settings.instances == instances
    assert settings.intra_op_threads == threads
    assert str(instances) in settings.reasons["instances"]


def test_queue_delay_is_zero_by_default_and_says_why():
    settings = derive_serving_settings(SPEC, cores=4, measured_latency_ms=3.6)
    assert settings.max_queue_delay_us == 0 and settings.max_batch_size == 32 and settings.warmup
    assert "never waits" in settings.reasons["max_queue_delay_us"] and "3.60 ms" in settings.reasons[
        "max_queue_delay_us"]


def test_explicit_values_are_kept():
    settings = derive_serving_settings(SPEC, cores=64, max_batch_size=8, max_queue_delay_us=2000, instances=3,
                                       source="the recipe")
    assert (settings.max_batch_size, settings.max_queue_delay_us, settings.instances) == (8, 2000, 3)
    assert settings.reasons["instances"] == "3: the recipe"


def test_available_cores_is_positive():
    assert available_cores() >= 1


def test_settings_validation():
    with pytest.raises(ConfigError, match="max_queue_delay_us must be >= 0"):
        ServingSettings(max_batch_size=8, max_queue_delay_us=-1, instances=1, intra_op_threads=1)
    with pytest.raises(ConfigError, match="preferred batch sizes"):
        ServingSettings(max_batch_size=8, max_queue_delay_us=0, instances=1, intra_op_threads=1,
                        preferred_batch_sizes=(16,))
    with pytest.raises(ConfigError, match="instances must be >= 1"):
        ServingSettings(max_batch_size=8, max_queue_delay_us=0, instances=0, intra_op_threads=1)


def test_generated_configs_have_derived_values_and_warmup():
    settings = derive_serving_settings(SPEC, cores=4, max_batch_size=16)
    configs = build_model_configs("clf", SPEC, version=1, settings=settings)
    engine = parse(configs["engine"].to_pbtxt())
    assert engine.dynamic_batching.max_queue_delay_microseconds == 0
    assert engine.instance_group[0].count == 2
    assert engine.parameters["intra_op_threads"].string_value == "2"
    assert {"why.max_queue_delay_us", "why.instances", "why.max_batch_size", "why.warmup"} <= set(engine.parameters)
    # one-hop: the engine also tokenizes, so a text sample warms its tokenizer up
    assert [(w.name, w.batch_size) for w in engine.model_warmup] == [("batch_1", 1), ("batch_16", 16), ("text", 1)]
    sample = engine.model_warmup[0]
    assert set(sample.inputs) == {"INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS"}
    assert sample.inputs["INPUT_IDS"].zero_data and list(sample.inputs["INPUT_IDS"].dims) == [64]
    mask_file = sample.inputs["ATTENTION_MASK"].input_data_file
    assert sample.inputs["ATTENTION_MASK"].data_type == pb.TYPE_INT64 and mask_file
    mask = np.frombuffer(configs["engine"].warmup_files[mask_file], dtype="<i8")
    assert mask.shape == (64,) and (mask == 1).all()  # a valid mask: the engine model refuses all-0 rows

    two_hop = build_model_configs("clf", SPEC, version=1, settings=settings, text_path="two-hop")
    assert [w.name for w in parse(two_hop["engine"].to_pbtxt()).model_warmup] == ["batch_1", "batch_16"]
    for tokenizes in (configs["engine"], two_hop["tokenizer"]):
        text_input = parse(tokenizes.to_pbtxt()).model_warmup[-1].inputs["TEXT"]
        assert text_input.data_type == pb.TYPE_STRING and list(text_input.dims) == [1]
        data = tokenizes.warmup_files[text_input.input_data_file]
        (length,) = struct.unpack("<I", data[:4])
        assert data[4:].decode() == WARMUP_TEXT and length == len(WARMUP_TEXT.encode())
    assert not parse(configs["ensemble"].to_pbtxt()).model_warmup  # Triton refuses warmup on ensembles


def test_warmup_can_be_turned_off_and_batch_1_has_one_sample():
    configs = build_model_configs("clf", SPEC, version=1, max_batch_size=1, warmup=False, text_path="two-hop")
    assert not configs["engine"].model_warmup and not configs["tokenizer"].model_warmup
    assert not build_model_configs("clf", SPEC, version=1, max_batch_size=1, warmup=False)["engine"].model_warmup
    configs = build_model_configs("clf", SPEC, version=1, max_batch_size=1, text_path="two-hop")
    assert [w.name for w in configs["engine"].model_warmup] == ["batch_1"]


def test_publish_step_derives_by_default():
    config = PublishConfig()
    assert config.max_queue_delay_us is None and config.instances is None
    with pytest.raises(ConfigError, match="max_queue_delay_us"):
        PublishConfig(max_queue_delay_us=-5)
    with pytest.raises(ConfigError, match="instances"):
        PublishConfig(instances=0)


def model_with(*warmup: WarmupSample, **kwargs) -> ModelConfig:
    defaults = dict(backend="python", max_batch_size=4,
                    inputs=(TensorSpec("X", "TYPE_INT64", (-1,)), TensorSpec("O", "TYPE_FP32", (3,), optional=True)),
                    outputs=(TensorSpec("Y", "TYPE_FP32", (-1,)),))
    return ModelConfig(name="m", model_warmup=warmup, **(defaults | kwargs))


def x(**kwargs) -> dict[str, WarmupInput]:
    return {"X": WarmupInput("TYPE_INT64", (5,), **(kwargs or {"zero_data": True}))}


def test_valid_warmup_round_trips():
    files = {"X": WarmupInput("TYPE_INT64", (2,), input_data_file="x.bin", file_data=np.ones(2, "<i8").tobytes())}
    config = model_with(WarmupSample("a", x(random_data=True), batch_size=4, count=3), WarmupSample("b", files))
    parsed = parse(config.to_pbtxt())
    assert [(w.name, w.batch_size, w.count) for w in parsed.model_warmup] == [("a", 4, 3), ("b", 1, 1)]
    assert parsed.model_warmup[0].inputs["X"].random_data
    assert config.warmup_files == {"x.bin": np.ones(2, "<i8").tobytes()}


@pytest.mark.parametrize(("make", "message"), [
    (lambda: WarmupInput("TYPE_INT64", (5,)), "exactly one of zero_data"),
    (lambda: WarmupInput("TYPE_INT64", (5,), zero_data=True, random_data=True), "exactly one of zero_data"),
    (lambda: WarmupInput("TYPE_INT64", (-1,), zero_data=True), "no -1"),
    (lambda: WarmupInput("TYPE_NOPE", (1,), zero_data=True), "unknown dtype"),
    (lambda: WarmupInput("TYPE_INT64", (1,), input_data_file="../x"), "plain file name"),
    (lambda: WarmupInput("TYPE_INT64", (2,), input_data_file="x", file_data=b"\0" * 8), "needs 16"),
    (lambda: WarmupInput("TYPE_INT64", (2,), zero_data=True, file_data=b"\0" * 16), "needs input_data_file"),
    (lambda: WarmupSample("a", x(), count=0), "count must be >= 1"),
    (lambda: WarmupSample("a b", x()), "name"),
    (lambda: WarmupSample("a", {}), "no inputs"),
    (lambda: model_with(WarmupSample("a", x(), batch_size=5)), "exceeds max_batch_size 4"),
    (lambda: model_with(WarmupSample("a", x()), WarmupSample("a", x())), "duplicate warmup"),
    (lambda: model_with(WarmupSample("a", x() | {"Z": WarmupInput("TYPE_INT64", (1,), zero_data=True)})),
     r"unknown inputs \['Z'\]"),
    (lambda: model_with(WarmupSample("a", {"O": WarmupInput("TYPE_FP32", (3,), zero_data=True)})),
     r"missing required inputs \['X'\]"),
    (lambda: model_with(WarmupSample("a", {"X": WarmupInput("TYPE_INT32", (5,), zero_data=True)})),
     "but the model takes TYPE_INT64"),
    (lambda: model_with(WarmupSample("a", x() | {"O": WarmupInput("TYPE_FP32", (4,), zero_data=True)})),
     r"\[4\] but the model takes TYPE_FP32 \[3\]"),
    (lambda: model_with(WarmupSample("a", x()), platform="ensemble", backend=None,
                        ensemble_steps=(EnsembleStep("s", {"X": "X"}, {"Y": "Y"}),)),
     "refuses model_warmup on ensembles"),
])
def test_warmup_validation_errors(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_publish_writes_warmup_files_where_triton_reads_them(tiny_bundle, tmp_path):  # noqa: F811
    repo = tmp_path / "repo"
    for _ in range(2):  # the second publish moves the files into existing model directories
        publish_engine(tiny_bundle, repo, "clf", max_batch_size=4, text_path="two-hop")
    publish_engine(tiny_bundle, repo, "clf", max_batch_size=4)  # one-hop: the engine's text sample too
    for model in ("clf.v2.engine", "clf.v2.tokenizer", "clf.v3.engine"):
        config = parse((repo / model / "config.pbtxt").read_text())
        files = {i.input_data_file for w in config.model_warmup for i in w.inputs.values() if i.input_data_file}
        assert files and all((repo / model / "warmup" / name).is_file() for name in files)
    assert not (repo / "clf" / "warmup").exists() and not (repo / "clf_engine" / "warmup").exists()


def test_publish_step_quotes_the_measured_latency():
    records = [StepRecord("select_runtime", 1.0, {"chosen": "openvino", "median_ms": 3.6}),
               StepRecord("validate", 1.0, {})]
    assert _measured_latency_ms(SimpleNamespace(records=records)) == 3.6
    assert _measured_latency_ms(SimpleNamespace(records=[])) is None


def _trial(instances: int, rps: float, p50: float, p99: float, error: str | None = None) -> Trial:
    return Trial(TrialSettings(instances, 8, 0), (LevelStats(1, p50, p99, rps / 2, 0), LevelStats(4, p50, p99, rps, 0)),
                 error)


def test_pick_best_by_throughput_within_the_slo_then_p50():
    trials = [_trial(1, 100, 2.0, 5.0), _trial(2, 300, 3.0, 50.0), _trial(3, 100, 1.5, 6.0),
              _trial(4, 900, 1.0, 1.0, error="server failed")]
    assert pick_best(trials, 10.0).settings.instances == 3  # 2 misses the SLO, 4 failed; 1 and 3 tie on req/s
    assert pick_best(trials, 0.5) is None


def test_tune_cli_flags():
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["tune", "--model", "intent", "--slo-p99-ms", "20", "--instances", "1,2,4",
                              "--max-batch", "8", "--queue-delay-us", "0,100", "--apply"])
    assert (args.instances, args.max_batch, args.queue_delay_us) == ((1, 2, 4), (8,), (0, 100))
    assert args.concurrency == (1, 4)
    assert args.apply and args.repo == "model_repo" and args.func is run
    with pytest.raises(SystemExit):
        parser.parse_args(["tune", "--model", "m", "--slo-p99-ms", "5", "--instances", "one"])


def test_tune_refuses_bad_settings_before_starting_anything(tmp_path):
    with pytest.raises(ConfigError, match="SLO must be"):
        tune(tmp_path, "clf", slo_p99_ms=0)
    with pytest.raises(ConfigError, match="queue delays"):
        tune(tmp_path, "clf", slo_p99_ms=5, queue_delays_us=(-1,))
    with pytest.raises(RepositoryError, match="no published model 'clf'"):
        tune(tmp_path, "clf", slo_p99_ms=5)


def test_publish_config_takes_the_text_layout_and_the_step_passes_it_on(monkeypatch, tmp_path):
    from engineforge.serve import publish_step

    assert PublishConfig().text_path == "one-hop"
    with pytest.raises(ConfigError, match=r"publish\.text_path must be 'one-hop' \(default\) or 'two-hop', got 'x'"):
        PublishConfig(text_path="x")
    seen = {}

    def fake_publish(bundle, repo, name, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(version=1, served=None, native_plan=None)

    monkeypatch.setattr(publish_step, "ensure_bundle", lambda ctx: tmp_path)
    monkeypatch.setattr(publish_step, "bundle_engine_mb", lambda bundle: 1.0)
    monkeypatch.setattr(publish_step, "publish_engine", fake_publish)
    publish_step.publish(SimpleNamespace(records=[]), PublishConfig(model_name="clf", text_path="two-hop"))
    assert seen["text_path"] == "two-hop"


PLAN = {"instances": 1, "intra_op_threads": 2, "cores": 4, "concurrency": 4,
        "why": "measured on the traffic profile (200 texts from eval data: tokens mean 14.2, p50 14, p90 21, p99 "
               "28, max 31): 1 instance(s) x 2 thread(s): 610 req/s at 4 concurrent callers",
        "candidates": [{"instances": 1, "intra_op_threads": 2, "requests_per_s": 610.0, "batch1_p50_ms": 1.6},
                       {"instances": 2, "intra_op_threads": 1, "requests_per_s": 540.0, "batch1_p50_ms": 2.4}]}


def test_instances_come_from_the_serving_plan_the_build_measured():
    spec = EngineSpec(labels=["a", "b"], max_sequence_length=64, intra_op_threads=2, serving_plan=PLAN,
                      length_buckets=(16, 32, 64))
    settings = derive_serving_settings(spec, cores=4)  # cores // threads would give 2
    assert settings.instances == 1 and settings.intra_op_threads == 2
    engine = parse(build_model_configs("clf", spec, version=1, settings=settings)["engine"].to_pbtxt())
    assert engine.instance_group[0].count == 1
    why = engine.parameters["why.instances"].string_value
    assert why.startswith("1: from engine.json's serving_plan, measured on the traffic profile") and "610 req/s" in why
    # Every bucket's compiled model is woken before READY, not only the longest.
    assert [w.name for w in engine.model_warmup] == ["batch_1", "batch_32", "bucket_16", "bucket_32", "text"]
    assert list(engine.model_warmup[2].inputs["INPUT_IDS"].dims) == [16]


@pytest.mark.parametrize("plan", [None, {"why": "no instances"}, PLAN | {"cores": 16}])
def test_without_a_usable_plan_instances_are_cores_over_threads(plan):
    """Older engine.json files have no plan; a plan measured on other cores does not describe this machine."""
    spec = EngineSpec(labels=["a"], intra_op_threads=2, serving_plan=plan)
    settings = derive_serving_settings(spec, cores=4)
    assert settings.instances == 2 and "4 cores // 2 threads" in settings.reasons["instances"]
