"""Which build steps each encoder family supports, refused from config.json alone before any work."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from engineforge.build.cli import main as build_engine
from engineforge.build.config import BuildConfig
from engineforge.build.families import FAMILIES, SUPPORTED_MODEL_TYPES, family_for, usable_positions
from engineforge.build.pipeline import check_build
from engineforge.build.presets import PRESET_NAMES, preset_steps
from engineforge.build.steps import ExportConfig, PruneConfig, StaticInt8Config, ValidateConfig
from engineforge.errors import UnsupportedArchitectureError, UnsupportedStepError

HEADLESS = {"albert", "deberta-v2", "mpnet", "modernbert"}  # no head pruning, so no fast-cpu / trt-int8


def _checkpoint(tmp_path: Path, model_type: str, **extra) -> Path:
    path = tmp_path / f"ckpt-{model_type}"
    path.mkdir()
    config = {"model_type": model_type, "architectures": ["AnyForSequenceClassification"], **extra}
    (path / "config.json").write_text(json.dumps(config))
    return path


def _config(tmp_path: Path, model_type: str, steps) -> BuildConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    eval_data = tmp_path / "eval.jsonl"
    eval_data.write_text('{"text": "x", "label": "a"}\n')
    return BuildConfig(checkpoint=_checkpoint(tmp_path, model_type), output_dir=tmp_path / "out", steps=steps,
                       eval_data=eval_data, train_data=eval_data, calibration_data=eval_data)


def test_every_family_is_listed_and_unknown_types_name_the_supported_ones():
    expected = {"distilbert", "albert", "deberta-v2", "mpnet", "modernbert", "bert", "roberta", "electra"}
    assert expected <= set(SUPPORTED_MODEL_TYPES)
    assert len(SUPPORTED_MODEL_TYPES) == len(set(SUPPORTED_MODEL_TYPES))  # one family per model_type
    with pytest.raises(UnsupportedArchitectureError, match=r"'gpt2' .* supported encoder types: bert, .*distilbert"):
        family_for("gpt2")


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_presets_needing_head_pruning_are_refused_with_the_reason_and_the_working_presets(tmp_path, family):
    model_type = family_for(family if family != "bert" else "bert").model_types[0]
    for preset in PRESET_NAMES:
        config = _config(tmp_path / preset, model_type, preset_steps(preset))
        if family in HEADLESS and preset in ("fast-cpu", "trt-int8"):
            with pytest.raises(UnsupportedStepError) as refused:
                check_build(config)
            message = str(refused.value)
            assert f"step 'prune' cannot run on {family} checkpoints: " in message
            assert f"Presets that work for {family}: fp32, max-accuracy, int8, int8-static" in message
            assert "fast-cpu" not in message.split("Presets that work")[1].split("\n")[0]
        else:
            check_build(config)
        assert not (tmp_path / preset / "out").exists()


def _follow(fix: str, steps: tuple) -> tuple:
    """Apply a refusal's recipe fix as a user would: "drop the a and b steps", "set step.option = value"."""
    for part in fix.split(" and set "):
        if part.startswith("drop the "):
            names = re.findall(r"(\w+)(?:,| and | steps?\b)", part.removeprefix("drop the "))
            steps = tuple(s for s in steps if s.step_type not in names)
        else:
            step_type, option, value = re.fullmatch(r"(?:set )?(\w+)\.(\w+) = (\S+)", part).groups()
            steps = tuple(dataclasses.replace(s, **{option: float(value)}) if s.step_type == step_type else s
                          for s in steps)
    return steps


def _refusal(config: BuildConfig) -> tuple[str, str]:
    """(the whole message, its fix); there is exactly one fix and it ends the message."""
    with pytest.raises(UnsupportedStepError) as refused:
        check_build(config)
    message = str(refused.value)
    assert message.count("Fix: ") == 1
    return message, message.rsplit("\nFix: ", 1)[1]


# (family, the pruning it cannot do, the one reason): ALBERT and ModernBERT block heads and FFN for one reason.
BLOCKED = [("albert", "head and FFN pruning", "ALBERT shares one layer's weights"),
           ("modernbert", "head and FFN pruning", "ModernBERT fuses Q/K/V"),
           ("mpnet", "head pruning", "MPNet's relative position bias"),
           ("deberta-v2", "head pruning", "DeBERTa's disentangled attention")]


@pytest.mark.parametrize("preset", ["trt-int8", "fast-cpu"])
@pytest.mark.parametrize(("model_type", "blocked", "reason"), BLOCKED)
def test_a_preset_refusal_names_every_blocker_once_and_its_preset_fix_passes(tmp_path, model_type, blocked,
                                                                             reason, preset):
    config = dataclasses.replace(_config(tmp_path, model_type, preset_steps(preset)), preset=preset)
    message, fix = _refusal(config)
    assert message.startswith(f"preset '{preset}' cannot build this {model_type} checkpoint:\n")
    assert f"- step 'prune' cannot run on {model_type} checkpoints: {blocked}: {reason}" in message
    assert message.count(reason) == 1 and message.count("step 'prune'") == 1
    assert "set prune.head_sparsity" not in message and "drop the prune step" not in message
    target = re.fullmatch(r"use preset '([\w-]+)' \(" + preset + r" without its prune and distill steps\)", fix)
    assert target and target.group(1) == {"trt-int8": "trt-int8-static", "fast-cpu": "int8-static"}[preset]
    check_build(dataclasses.replace(config, steps=preset_steps(target.group(1)), preset=target.group(1)))


@pytest.mark.parametrize(("model_type", "blocked", "reason"), BLOCKED)
def test_a_recipe_refusal_names_every_blocker_once_and_following_its_fix_passes(tmp_path, model_type, blocked,
                                                                                reason):
    steps = preset_steps("trt-int8")  # as a recipe: no preset to point at, so the fix edits the steps
    message, fix = _refusal(_config(tmp_path, model_type, steps))
    assert message.startswith(f"this recipe cannot build this {model_type} checkpoint:\n")
    assert message.count(reason) == 1 and f"{blocked}: {reason}" in message
    assert fix == ("set prune.head_sparsity = 0" if blocked == "head pruning" else "drop the prune and distill steps")
    check_build(_config(tmp_path / "fixed", model_type, _follow(fix, steps)))


def _token_classifier(tmp_path: Path, model_type: str, **data) -> BuildConfig:
    checkpoint = _checkpoint(tmp_path, model_type)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps(config | {"architectures": ["AnyForTokenClassification"]}))
    return BuildConfig(checkpoint=checkpoint, output_dir=tmp_path / "out", steps=preset_steps("fast-cpu"),
                       preset="fast-cpu", **data)


def test_a_token_classifier_refusal_names_prune_and_distill_once_each_and_one_fix(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "x"}\n')
    config = _token_classifier(tmp_path, "bert", eval_data=data, train_data=data, calibration_data=data)
    message, fix = _refusal(config)
    assert "- step 'prune' cannot build a token-classification model: pruning of token classifiers" in message
    assert "- step 'distill' cannot build a token-classification model: distillation of token classifiers" in message
    blockers = [line for line in message.splitlines() if line.startswith("- ")]
    # The fix is said once, at the end: no blocker line carries one.
    assert len(blockers) == 2 and not any("use " in line or "preset" in line for line in blockers)
    assert fix == "use preset 'int8-static' (fast-cpu without its prune and distill steps)"
    check_build(dataclasses.replace(config, steps=preset_steps("int8-static"), preset="int8-static"))


def test_every_blocker_of_family_task_and_data_is_in_one_refusal_whose_fix_passes(tmp_path):
    """ALBERT token classifier, trt-int8, no calibration data: four blockers, one error, one fix that works."""
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "x"}\n')
    config = dataclasses.replace(_token_classifier(tmp_path, "albert", eval_data=data, train_data=data),
                                 steps=preset_steps("trt-int8"), preset="trt-int8")
    message, fix = _refusal(config)
    lines = [line for line in message.splitlines() if line.startswith("- ")]
    assert lines == [
        "- step 'prune' cannot run on albert checkpoints: head and FFN pruning: ALBERT shares one layer's weights "
        "across every layer, so per-layer structured pruning has no meaning",
        "- step 'prune' cannot build a token-classification model: pruning of token classifiers (per-token "
        "importance) is not built yet",
        "- step 'distill' cannot build a token-classification model: distillation of token classifiers (per-token "
        "KL) is not built yet",
        "- step 'static_int8' needs representative calibration data to fix int8 activation ranges"]
    assert fix.startswith("use preset 'trt-int8-static' (trt-int8 without its prune and distill steps); and pass "
                          "--calibration-data FILE")
    check_build(dataclasses.replace(config, steps=preset_steps("trt-int8-static"), calibration_data=data))


def test_the_cli_refusal_of_trt_int8_on_albert_is_one_usage_error_with_the_fix(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, "albert")
    data = tmp_path / "eval.jsonl"
    data.write_text('{"text": "x", "label": "a"}\n')
    args = [str(checkpoint), "--output", str(tmp_path / "out"), "--eval-data", str(data), "--train-data", str(data),
            "--calibration-data", str(data), "--no-publish"]
    assert build_engine([*args, "--preset", "trt-int8"]) == 2
    err = capsys.readouterr().err
    assert "head and FFN pruning" in err and err.rstrip().endswith(
        "Fix: use preset 'trt-int8-static' (trt-int8 without its prune and distill steps)")
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("model_type,allowed", [("mpnet", True), ("deberta-v2", True), ("distilbert", True),
                                                ("albert", False), ("modernbert", False)])
def test_ffn_only_pruning_where_the_layout_allows_it(tmp_path, model_type, allowed):
    steps = (PruneConfig(head_sparsity=0.0, ffn_sparsity=0.5), ExportConfig(), StaticInt8Config(), ValidateConfig())
    config = _config(tmp_path, model_type, steps)
    if allowed:
        check_build(config)
    else:
        with pytest.raises(UnsupportedStepError, match=r"FFN pruning: .*(shares one layer|fuses Q/K/V)"):
            check_build(config)


def test_the_cli_refuses_an_unsupported_preset_as_a_usage_error_without_a_traceback(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, "mpnet")
    data = tmp_path / "eval.jsonl"
    data.write_text('{"text": "x", "label": "a"}\n')
    code = build_engine([str(checkpoint), "--preset", "fast-cpu", "--output", str(tmp_path / "out"),
                         "--eval-data", str(data), "--train-data", str(data), "--calibration-data", str(data)])
    err = capsys.readouterr().err
    assert code == 2 and "preset 'fast-cpu' cannot build this mpnet checkpoint" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("config,expected", [
    ({"model_type": "bert", "max_position_embeddings": 512}, 512),
    ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
    ({"model_type": "mpnet", "max_position_embeddings": 130, "pad_token_id": 0}, 129),
    ({"model_type": "distilbert", "max_position_embeddings": 512}, 512),
])
def test_usable_positions_follow_each_familys_position_scheme(config, expected):
    assert usable_positions(config) == expected


@pytest.mark.parametrize("architecture,files,forced,expected", [
    ("BertForSequenceClassification", (), None, "text-classification"),
    ("DistilBertForTokenClassification", (), None, "token-classification"),
    ("MPNetModel", (), None, "embeddings"),
    ("", ("modules.json",), None, "embeddings"),  # a sentence-transformers directory
    ("BertForSequenceClassification", (), "embeddings", "embeddings"),  # the encoder under a classifier's head
])
def test_the_task_is_read_from_the_checkpoint_or_forced(tmp_path, architecture, files, forced, expected):
    from engineforge.build.tasks import detect_task

    for name in files:
        (tmp_path / name).write_text("[]")
    config = {"model_type": "bert", "architectures": [architecture] if architecture else []}
    assert detect_task(tmp_path, config, forced) == expected


@pytest.mark.parametrize("architecture,forced,message", [
    ("BertForMaskedLM", None, r"neither a sequence or token classifier nor a bare encoder; supported tasks: "
                              r"text-classification .*token-classification .*embeddings"),
    ("BertForSequenceClassification", "token-classification", r"--task token-classification needs a "
                                                              r"\*ForTokenClassification checkpoint"),
    ("BertModel", "summarization", r"task 'summarization' is not supported; supported tasks: text-classification, "
                                   r"token-classification, embeddings"),
])
def test_unsupported_task_combinations_list_what_is_supported(tmp_path, architecture, forced, message):
    from engineforge.build.tasks import detect_task

    with pytest.raises(UnsupportedArchitectureError, match=message):
        detect_task(tmp_path, {"model_type": "bert", "architectures": [architecture]}, forced)


def test_pooling_is_read_from_sentence_transformers_files(tmp_path):
    from engineforge.build.tasks import read_pooling

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Normalize"}]))
    pooling = read_pooling(tmp_path)
    assert (pooling.mode, pooling.normalize) == ("cls", True)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(UnsupportedArchitectureError, match="serves mean or CLS pooling"):
        read_pooling(tmp_path)
