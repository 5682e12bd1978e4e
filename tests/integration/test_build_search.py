"""Budget search: candidates are tried in order; the first that fits is kept, failures are reported."""

from __future__ import annotations

import json

import pytest

from engineforge.build.config import BuildConfig
from engineforge.build.presets import preset_candidates, preset_steps
from engineforge.build.search import run_candidates
from engineforge.errors import AccuracyBudgetExceeded
from tests.helpers.tiny_checkpoint import make_tiny_checkpoint, write_eval_data


def _no_publish(name):
    return tuple(s for s in preset_steps(name) if s.step_type != "publish")


@pytest.fixture(scope="module")
def near_tie(tmp_path_factory):
    root = tmp_path_factory.mktemp("near-tie")
    checkpoint = make_tiny_checkpoint(root / "ckpt", near_tie=True)  # int8 flips every prediction
    return checkpoint, write_eval_data(root / "eval.jsonl", checkpoint)


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
