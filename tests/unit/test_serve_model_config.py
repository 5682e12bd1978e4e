"""Model config dataclasses -> config.pbtxt, re-parsed with Triton's own protobuf schema."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import ConfigError
from engineforge.serve.model_config import (
    DynamicBatching,
    EnsembleStep,
    InstanceGroup,
    ModelConfig,
    TensorSpec,
    validate_ensemble,
)
from engineforge.serve.model_layout import build_model_configs


def parse(text: str) -> pb.ModelConfig:
    return text_format.Parse(text, pb.ModelConfig())


def simple(name: str = "m", **kwargs) -> ModelConfig:
    defaults = dict(
        backend="python",
        max_batch_size=8,
        inputs=(TensorSpec("X", "TYPE_INT64", (-1,), optional=True, allow_ragged_batch=True),),
        outputs=(TensorSpec("Y", "TYPE_FP32", (-1,)),),
    )
    return ModelConfig(name=name, **(defaults | kwargs))


def test_python_model_pbtxt_roundtrip():
    config = simple(
        dynamic_batching=DynamicBatching(preferred_batch_sizes=(4, 8), max_queue_delay_us=1500),
        instance_group=InstanceGroup(count=2),
        parameters={"labels": '["a", "b"]'},
    )
    parsed = parse(config.to_pbtxt())
    assert parsed == config.to_protobuf()
    assert parsed.name == "m" and parsed.backend == "python" and parsed.max_batch_size == 8
    assert parsed.input[0].data_type == pb.TYPE_INT64 and list(parsed.input[0].dims) == [-1]
    assert parsed.input[0].optional and parsed.input[0].allow_ragged_batch
    assert parsed.output[0].data_type == pb.TYPE_FP32
    assert list(parsed.dynamic_batching.preferred_batch_size) == [4, 8]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 1500
    assert parsed.instance_group[0].count == 2 and parsed.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert parsed.parameters["labels"].string_value == '["a", "b"]'


def test_published_layout_configs():
    spec = EngineSpec(labels=["a", "b", "c"], max_sequence_length=64, build_id="b7")
    configs = build_model_configs("clf", spec, version=3, max_batch_size=16, max_queue_delay_us=500, instances=2,
                                  change_id="c1", text_path="two-hop")
    engine = parse(configs["engine"].to_pbtxt())
    assert engine.name == "clf.v3.engine" and engine.backend == "python" and engine.max_batch_size == 16
    assert [i.name for i in engine.input] == ["INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS", "TOKENIZER_VERSION"]
    assert [i.optional for i in engine.input] == [False, False, True, True]
    assert [(o.name, o.data_type, list(o.dims)) for o in engine.output] == [
        ("LOGITS", pb.TYPE_FP32, [-1]),
        ("PROBABILITIES", pb.TYPE_FP32, [-1]),
        ("LABEL", pb.TYPE_STRING, [1]),
        ("VERSION", pb.TYPE_STRING, [1]),
    ]
    assert engine.dynamic_batching.max_queue_delay_microseconds == 500
    assert engine.instance_group[0].count == 2
    assert engine.parameters["labels"].string_value == '["a", "b", "c"]'
    assert engine.parameters["published_version"].string_value == "3"
    assert list(engine.version_policy.specific.versions) == [3]
    tokenizer = parse(configs["tokenizer"].to_pbtxt())
    assert tokenizer.name == "clf.v3.tokenizer"
    assert [(i.name, i.data_type, list(i.dims)) for i in tokenizer.input] == [("TEXT", pb.TYPE_STRING, [1])]
    assert [o.name for o in tokenizer.output] == ["INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS", "VERSION"]
    ensemble = parse(configs["ensemble"].to_pbtxt())
    # entry points: the batch is an explicit dim Triton checks in full (a 32-bit-truncated batch dim no longer slips by)
    assert ensemble.name == "clf" and ensemble.platform == "ensemble" and ensemble.max_batch_size == 0
    assert [(i.name, list(i.dims)) for i in ensemble.input] == [("TEXT", [-1, 1])]
    assert [(o.name, list(o.dims)) for o in ensemble.output] == [("LABEL", [-1, 1]), ("PROBABILITIES", [-1, -1]),
                                                                   ("LOGITS", [-1, -1]), ("VERSION", [-1, 1])]
    assert list(ensemble.version_policy.specific.versions) == [3]
    assert ensemble.parameters["change_id"].string_value == "c1"
    steps = ensemble.ensemble_scheduling.step
    # Both steps pinned to the same version's models: a request never mixes versions.
    assert [(s.model_name, s.model_version) for s in steps] == [("clf.v3.tokenizer", 3), ("clf.v3.engine", 3)]
    assert dict(steps[1].output_map) == {"LABEL": "LABEL", "PROBABILITIES": "PROBABILITIES", "LOGITS": "LOGITS",
                                         "VERSION": "VERSION"}
    assert steps[0].output_map["VERSION"] == steps[1].input_map["TOKENIZER_VERSION"]
    assert {k: v for k, v in steps[0].output_map.items() if k != "VERSION"} == {
        k: v for k, v in steps[1].input_map.items() if k != "TOKENIZER_VERSION"}
    ids = parse(configs["ids"].to_pbtxt())
    assert ids.name == "clf_engine" and ids.platform == "ensemble" and list(ids.version_policy.specific.versions) == [3]
    assert [(s.model_name, s.model_version) for s in ids.ensemble_scheduling.step] == [("clf.v3.engine", 3)]
    assert [(i.name, list(i.dims), i.optional) for i in ids.input] == [
        ("INPUT_IDS", [-1, -1], False), ("ATTENTION_MASK", [-1, -1], False), ("TOKEN_TYPE_IDS", [-1, -1], True)]
    assert ids.max_batch_size == 0
    assert ids.parameters["labels"].string_value == '["a", "b", "c"]'
    assert ids.parameters["max_sequence_length"].string_value == "64"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TensorSpec("X", "TYPE_FLOAT", (-1,)), "unknown dtype 'TYPE_FLOAT'"),
        (lambda: TensorSpec("X", "TYPE_FP32", ()), "dims"),
        (lambda: simple(outputs=(TensorSpec("X", "TYPE_FP32", (1,)),)), r"duplicate tensor names \['X'\]"),
        (lambda: simple(backend=None), "exactly one of backend"),
        (lambda: simple(dynamic_batching=DynamicBatching((16,))), "exceed max_batch_size"),
        (lambda: InstanceGroup(count=0), "instance count"),
        (lambda: InstanceGroup(kind="TPU"), "kind"),
        (lambda: simple(name="bad name"), "invalid"),
    ],
)
def test_validation_messages(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_ensemble_validation():
    member = simple("member")
    step = EnsembleStep("member", input_map={"X": "IN"}, output_map={"Y": "OUT"})
    io = dict(inputs=(TensorSpec("IN", "TYPE_INT64", (-1,)),), outputs=(TensorSpec("OUT", "TYPE_FP32", (-1,)),))
    ok = ModelConfig("ens", platform="ensemble", max_batch_size=8, ensemble_steps=(step,), **io)
    validate_ensemble(ok, [member])
    too_big = ModelConfig("ens", platform="ensemble", max_batch_size=64, ensemble_steps=(step,), **io)
    with pytest.raises(ConfigError, match="max_batch_size 64 exceeds that of 'member' \\(8\\); lower"):
        validate_ensemble(too_big, [member])
    with pytest.raises(ConfigError, match="not being published"):
        validate_ensemble(ok, [simple("other")])
    wrong = EnsembleStep("member", input_map={"Z": "IN"}, output_map={"Y": "OUT"})
    with pytest.raises(ConfigError, match="unknown tensors"):
        validate_ensemble(
            ModelConfig("ens", platform="ensemble", max_batch_size=8, ensemble_steps=(wrong,), **io), [member]
        )
    unwired = EnsembleStep("member", input_map={"X": "NOWHERE"}, output_map={"Y": "OUT"})
    with pytest.raises(ConfigError, match="consumes \\['NOWHERE'\\]"):
        ModelConfig("ens", platform="ensemble", max_batch_size=8, ensemble_steps=(unwired,), **io)


def test_one_hop_layout_is_the_default_one_engine_model_takes_text_or_ids():
    spec = EngineSpec(labels=["a", "b", "c"], max_sequence_length=64, build_id="b7")
    configs = build_model_configs("clf", spec, version=3, max_batch_size=16, instances=2, change_id="c1")
    assert set(configs) == {"engine", "ensemble", "ids"}  # no tokenizer model
    engine = parse(configs["engine"].to_pbtxt())
    assert [(i.name, i.optional) for i in engine.input] == [
        ("INPUT_IDS", True), ("ATTENTION_MASK", True), ("TOKEN_TYPE_IDS", True), ("TEXT", True),
        ("TOKENIZER_VERSION", True)]
    text = next(i for i in engine.input if i.name == "TEXT")
    assert text.data_type == pb.TYPE_STRING and list(text.dims) == [1]
    assert engine.parameters["text_path"].string_value == "one-hop"
    assert {s.name for s in engine.model_warmup} == {"batch_1", "batch_16", "text"}  # the tokenizer warms up too
    ensemble = parse(configs["ensemble"].to_pbtxt())
    (step,) = ensemble.ensemble_scheduling.step  # TEXT straight to this version's engine
    assert (step.model_name, step.model_version, dict(step.input_map)) == ("clf.v3.engine", 3, {"TEXT": "TEXT"})
    assert dict(step.output_map) == {"LABEL": "LABEL", "PROBABILITIES": "PROBABILITIES", "LOGITS": "LOGITS",
                                     "VERSION": "VERSION"}
    ids = parse(configs["ids"].to_pbtxt())  # the token-id entry point is as before: ids required
    assert [(i.name, i.optional) for i in ids.input] == [
        ("INPUT_IDS", False), ("ATTENTION_MASK", False), ("TOKEN_TYPE_IDS", True)]
    for entry in (ensemble, ids):  # the layout and its reason, like the other serving settings
        assert entry.parameters["text_path"].string_value == "one-hop"
        assert "one python-backend hop" in entry.parameters["why.text_path"].string_value
    two_hop = build_model_configs("clf", spec, version=3, text_path="two-hop")
    assert parse(two_hop["ensemble"].to_pbtxt()).parameters["text_path"].string_value == "two-hop"
    with pytest.raises(ConfigError, match="text_path 'three-hop': use one of"):
        build_model_configs("clf", spec, version=3, text_path="three-hop")


def test_one_hop_token_classifier_engine_takes_text_once():
    spec = EngineSpec(labels=["O", "B-X"], max_sequence_length=64, task="token-classification")
    engine = parse(build_model_configs("clf", spec, version=1)["engine"].to_pbtxt())
    names = [i.name for i in engine.input]
    assert names.count("TEXT") == 1 and {"OFFSETS", "WORD_IDS"} <= set(names)
    assert all(i.optional for i in engine.input)
