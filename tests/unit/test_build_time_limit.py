"""The time a ladder takes: the estimate's arithmetic, how far a result is from its budget, the limit's clock and
how `max_build_minutes` reaches a build (flag and recipe)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engineforge.build.accuracy import Budget
from engineforge.build.cli import make_parser, prepared_from_args
from engineforge.build.config import BuildConfig
from engineforge.build.estimate import Timing, candidate_seconds, distill_split
from engineforge.build.presets import load_recipe, preset_candidates
from engineforge.build.steps import DistillConfig, ExportConfig
from engineforge.build.time_limit import TimeLimit, closest, minutes, shortfall
from engineforge.errors import ConfigError, UsageError

# The demo's numbers: 480 train + 1 722 unlabelled texts, 320 eval texts.
DEMO = Timing(forward_s=0.01, train_s=0.05, batch=16, prune_texts=480, distill_texts=2202, eval_texts=320,
              calibration_texts=480)


def test_distillation_steps_follow_the_distill_steps_own_split():
    assert distill_split(DistillConfig(epochs=8, batch_size=16), 2202) == (1982, 220, 124)
    assert distill_split(DistillConfig(holdout_fraction=0.0, batch_size=16), 40) == (40, 0, 3)
    assert distill_split(DistillConfig(augment_copies=1, batch_size=10), 100) == (180, 10, 18)


def test_each_rung_is_estimated_from_the_measured_step_and_what_it_prunes():
    rungs = [candidate_seconds(steps, DEMO) for _, steps in preset_candidates("fast-cpu")]
    first, milder, unpruned = rungs[0], rungs[2], rungs[3]
    # 8 epochs x 1982 texts x (student step scaled to the 50 %/50 % student + teacher forward for hidden states)
    assert first["distill"] == pytest.approx(8 * (1982 * (0.05 * 0.5 + 0.01) + 220 * 0.01 * 0.5)
                                             + (2202 + 2 * 320) * 0.01)
    assert first["prune"] == pytest.approx(256 * 0.06)  # 16 batches of 16 texts, forward + backward
    assert first["distill"] < milder["distill"]  # a smaller student trains faster
    assert "distill" not in unpruned and "prune" not in unpruned
    assert sum(unpruned.values()) < sum(first.values()) / 5
    assert candidate_seconds((ExportConfig(),), DEMO)["export"] == pytest.approx(5 + 320 * 0.01)


def test_shortfall_is_the_points_a_result_misses_its_budget_by():
    budget = Budget(max_accuracy_drop=1.0, min_agreement=0.98)
    assert shortfall({"agreement": 0.9575, "accuracy_drop": 0.5}, budget) == pytest.approx(2.25)
    assert shortfall({"agreement": 0.97, "accuracy_drop": 1.5}, budget) == pytest.approx(1.5)
    assert shortfall({"agreement": 0.99, "accuracy_drop": 0.0}, budget) == 0
    assert shortfall({"cosine_mean": 0.933, "cosine_worst": 0.855, "recall_drop": 0.0}, Budget()) == pytest.approx(
        5.7 + 9.5)
    assert shortfall({"runtime": "openvino", "status": "cannot run"}, budget) is None
    tried = [{"candidate": "a", "shortfall": 2.25}, {"candidate": "b", "shortfall": 0.4}, {"candidate": "c"}]
    assert closest(tried)["candidate"] == "b" and closest([{"candidate": "c"}]) is None


def test_the_limit_runs_on_the_clock_it_is_given():
    now = [100.0]
    limit = TimeLimit.start(2, lambda: now[0])
    assert limit.remaining_s() == 120 and not limit.expired()
    now[0] += 119.5
    assert not limit.expired()
    now[0] += 0.5
    assert limit.expired()
    assert str(limit.reached("during distill")) == "the build time limit of 2.0 min was reached during distill"
    assert [minutes(s) for s in (42, 150, 1800)] == ["42 s", "2.5 min", "30 min"]


def test_max_build_minutes_comes_from_the_flag_or_the_recipe_and_must_be_positive(tmp_path: Path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    config = {"model_type": "bert", "architectures": ["BertForSequenceClassification"]}
    (checkpoint / "config.json").write_text(json.dumps(config))
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "x", "label": "a"}\n')
    args = [str(checkpoint), "--preset", "fast-cpu", "--eval-data", str(data), "--train-data", str(data),
            "--calibration-data", str(data)]
    candidates = prepared_from_args(make_parser().parse_args([*args, "--max-build-minutes", "45"])).candidates
    assert len(candidates) == 4 and {c.max_build_minutes for _, c in candidates} == {45}
    with pytest.raises(UsageError, match=r"max_build_minutes=0\.0: give minutes > 0"):
        prepared_from_args(make_parser().parse_args([*args, "--max-build-minutes", "0"]))
    recipe = tmp_path / "build.toml"
    recipe.write_text('preset = "int8"\nmax_build_minutes = 20\n')
    assert load_recipe(recipe)["max_build_minutes"] == 20
    with pytest.raises(ConfigError, match="max_build_minutes=-1"):
        BuildConfig(checkpoint=checkpoint, output_dir=tmp_path / "out", steps=(ExportConfig(),), max_build_minutes=-1)
