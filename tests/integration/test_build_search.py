"""Budget search: candidates are tried in order; the first that fits is kept, failures are reported."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from engineforge.build import search
from engineforge.build.cli import main as build_engine
from engineforge.build.config import BuildConfig
from engineforge.build.presets import preset_candidates, preset_steps
from engineforge.build.search import run_candidates
from engineforge.build.time_limit import TimeLimit
from engineforge.errors import AccuracyBudgetExceeded, BuildTimeLimitReached
from tests.helpers.tiny_checkpoint import EVAL_TEXTS, make_tiny_checkpoint, write_eval_data


def _no_publish(name):
    return tuple(s for s in preset_steps(name) if s.step_type != "publish")


@pytest.fixture(scope="module")
def near_tie(tmp_path_factory):
    root = tmp_path_factory.mktemp("near-tie")
    checkpoint = make_tiny_checkpoint(root / "ckpt", near_tie=True)  # int8 flips every prediction
    return checkpoint, write_eval_data(root / "eval.jsonl", checkpoint)


def _search_record(out_dir: Path) -> dict:
    """The candidate search's JSON record at the end of a failed ladder's build.log."""
    log = (out_dir / "build.log").read_text()
    return json.loads(log[log.index("{", log.index("## Candidate search")):])


def test_first_candidate_within_budget_is_kept_and_the_misses_recorded(near_tie, tmp_path):
    checkpoint, eval_data = near_tie
    config = {"checkpoint": checkpoint, "output_dir": tmp_path / "out", "eval_data": eval_data}
    report = run_candidates([("int8", BuildConfig(steps=_no_publish("int8"), **config)),
                             ("fp32", BuildConfig(steps=_no_publish("fp32"), **config))])
    assert [c["result"] for c in report.candidates] == ["outside budget", "chosen"]
    assert "agreement" in report.candidates[0]["reason"]
    assert report.precision == "fp32"
    on_disk = json.loads((tmp_path / "out" / "build_report.json").read_text())
    assert on_disk["candidates"][1]["candidate"] == "fp32"
    assert "Candidates tried" in (tmp_path / "out" / "build_report.md").read_text()


def test_no_fitting_candidate_fails_listing_what_was_tried(near_tie, tmp_path):
    checkpoint, eval_data = near_tie
    config = BuildConfig(checkpoint=checkpoint, output_dir=tmp_path / "out", eval_data=eval_data,
                         steps=_no_publish("int8"))
    with pytest.raises(AccuracyBudgetExceeded, match=r"Tried:\n- first: .*\n- second: "):
        run_candidates([("first", config), ("second", config)])


def test_fast_cpu_tries_milder_pruning_then_none():
    from engineforge.build.steps import PruneConfig

    names = [name for name, _ in preset_candidates("fast-cpu")]
    assert names[0].startswith("prune 50%") and names[1].startswith("prune 33% heads / 60% FFN")
    assert names[2].startswith("prune 25%")
    prune = [next((s for s in steps if isinstance(s, PruneConfig)), None) for _, steps in preset_candidates("fast-cpu")]
    assert [round(p.head_sparsity * 12) for p in prune[:3]] == [6, 4, 3]  # heads removed of MiniLM's 12
    assert names[-1] == "no pruning, static int8"
    assert all(steps[-1].step_type == "publish" for _, steps in preset_candidates("fast-cpu"))


# ---- the time a ladder takes: the estimate before it starts and --max-build-minutes ----------------------------

class FakeClock:
    """A clock the test moves: a limit then triggers exactly where the test says, never by machine speed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ladder_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    checkpoint = make_tiny_checkpoint(root / "ckpt", heads=2)
    train = root / "train.jsonl"
    texts = [*EVAL_TEXTS, *(t.upper() for t in EVAL_TEXTS), *(f"{t} thanks" for t in EVAL_TEXTS),
             *(f"hi, {t}" for t in EVAL_TEXTS)]  # 48 texts: 40 distilled on in 3 steps per epoch, 8 held out
    train.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return checkpoint, write_eval_data(root / "eval.jsonl", checkpoint), train


def _ladder(inputs, out):
    checkpoint, eval_data, train = inputs
    return [(name, BuildConfig(checkpoint=checkpoint, output_dir=out, eval_data=eval_data, train_data=train,
                               calibration_data=train, preset="fast-cpu",
                               steps=tuple(s for s in steps if s.step_type != "publish")))
            for name, steps in preset_candidates("fast-cpu")]


def test_the_estimate_is_printed_first_and_the_limit_stops_distillation_at_a_step(ladder_inputs, tmp_path,
                                                                                   monkeypatch, capsys):
    distill_module = sys.modules["engineforge.build.steps.distill"]
    clock, steps_run, real_loss = FakeClock(), [], distill_module.kd_loss

    def ten_minutes_per_step(*args, **kwargs):  # every distillation step "takes" ten minutes
        steps_run.append(1)
        clock.now += 600
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(distill_module, "kd_loss", ten_minutes_per_step)
    with pytest.raises(BuildTimeLimitReached) as stopped:  # far above any real estimate of this tiny ladder
        run_candidates(_ladder(ladder_inputs, tmp_path / "out"), time_limit=TimeLimit.start(30, clock))
    assert len(steps_run) == 3  # steps 1-3 ran; the limit was found before step 4, at a step boundary

    message = str(stopped.value)
    assert message.startswith("the build time limit of 30 min ended the search before a candidate met the accuracy "
                              "budget; nothing was published. No candidate finished. Candidates:\n- prune 50% heads")
    assert re.search(r"stopped by the time limit: the build time limit of 30 min was reached during distill, "
                     r"before epoch 2/8, step 1/3", message)
    assert message.count(": not started: the time limit was reached") == 3
    assert "or use preset 'int8-static' (this ladder's last candidate alone)" in message

    # A failed build keeps only its log: the search's record (each candidate's estimate and outcome) is at its end.
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["build.log"]
    log = (tmp_path / "out" / "build.log").read_text()
    assert "BuildTimeLimitReached: the build time limit" in log.split("## Candidate search")[1]
    search = _search_record(tmp_path / "out")
    assert [c["result"] for c in search["candidates"]] == ["stopped by the time limit"] + ["not started"] * 3
    assert all(c["estimated_s"] > 0 for c in search["candidates"]) and search["max_build_minutes"] == 30

    err = capsys.readouterr().err
    estimate = err.index("time estimate: measured here")
    assert estimate < err.index("candidate 1/4: prune 50% heads")
    assert re.search(r"candidate 1/4 prune 50% heads / 50% FFN \+ distill \+ static int8: ~\d.* \(prune .*, distill 8 "
                     r"epochs x 3 steps .*, other steps .*\)", err)
    assert re.search(r"whole ladder: ~.* if candidate 1 meets the budget, ~.* if all 4 run", err)
    assert "distill: time limit reached; stopping before epoch 2/8, step 1/3" in err


def test_a_limit_reached_between_candidates_stops_the_ladder_naming_the_closest(near_tie, tmp_path, monkeypatch):
    clock, real_run = FakeClock(), search.run_build

    def two_hours_each(config, **checked):
        try:
            return real_run(config, **checked)
        finally:
            clock.now += 7200

    monkeypatch.setattr(search, "run_build", two_hours_each)
    checkpoint, eval_data = near_tie
    config = {"checkpoint": checkpoint, "output_dir": tmp_path / "out", "eval_data": eval_data}
    with pytest.raises(BuildTimeLimitReached) as stopped:
        run_candidates([("int8", BuildConfig(steps=_no_publish("int8"), **config)),
                        ("fp32", BuildConfig(steps=_no_publish("fp32"), **config))],
                       time_limit=TimeLimit.start(60, clock))
    message = str(stopped.value)
    assert re.search(r"Closest to the budget: int8 \(agreement \d+\.\d\d%, accuracy drop .*; [\d.]+ points short\)",
                     message)
    assert "- int8: outside budget: engine is outside the accuracy budget" in message
    assert "- fp32: not started: the time limit was reached" in message
    candidates = _search_record(tmp_path / "out")["candidates"]
    assert [c["result"] for c in candidates] == ["outside budget", "not started"]
    assert candidates[0]["shortfall"] > 0


def test_a_candidate_estimated_past_the_time_left_is_skipped_for_a_cheaper_one(near_tie, tmp_path):
    checkpoint, eval_data = near_tie
    config = {"checkpoint": checkpoint, "output_dir": tmp_path / "out", "eval_data": eval_data}
    report = run_candidates([("slow", BuildConfig(steps=_no_publish("int8"), **config)),
                             ("fp32", BuildConfig(steps=_no_publish("fp32"), **config))],
                            time_limit=TimeLimit.start(5, FakeClock()), estimates=[600.0, 20.0])
    assert [(c["candidate"], c["result"]) for c in report.candidates] == [("slow", "skipped"), ("fp32", "chosen")]
    assert report.candidates[0]["reason"] == "estimated ~10 min, 5.0 min left"
    assert report.precision == "fp32" and report.settings["max_build_minutes"] == 5


def test_max_build_minutes_on_the_command_line_fails_cleanly_when_nothing_fits(ladder_inputs, tmp_path, capsys):
    checkpoint, eval_data, train = ladder_inputs
    code = build_engine([str(checkpoint), "--preset", "fast-cpu", "--eval-data", str(eval_data), "--train-data",
                         str(train), "--calibration-data", str(train), "--no-publish", "--output",
                         str(tmp_path / "out"), "--max-build-minutes", "0.001"])  # 60 ms: always too little
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.index("time estimate: measured here") < err.index("build-engine: error: the build time limit of 0 s")
    assert "No candidate finished" in err and "nothing was published" in err
    # no candidate ran: nothing was written, and the message says what happened to each of the 4
    assert not (tmp_path / "out").exists()
    assert sum(f": {result}: " in err for result in ("skipped", "not started")) >= 1 and err.count("\n- ") >= 4
