"""`tune` against a real tritonserver: a 2x1x2 grid on the tiny engine, the report, `apply`, and an impossible SLO.

One sweep (4 server starts with the engine model alone, ~35 s on 2 cores) serves both tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from engineforge.commands.tune import SLONotMetError, TuneResult, tune
from engineforge.errors import EngineforgeError, ServerError
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import find_triton
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401

pytestmark = [pytest.mark.triton, pytest.mark.slow]

MODEL = "clf"
GRID = {"instances": (1, 2), "max_batch_sizes": (4,), "queue_delays_us": (0, 1000)}
LOAD = {"concurrency": (1, 2), "duration_s": 1.0, "warmup_s": 0.5}


@pytest.fixture(scope="module")
def repo(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    try:
        find_triton()
    except ServerError as exc:
        pytest.skip(str(exc))
    repo = tmp_path_factory.mktemp("tune") / "model_repo"
    publish_engine(tiny_bundle, repo, MODEL, max_batch_size=8)
    return repo


@pytest.fixture(scope="module")
def swept(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TuneResult, str]:
    before = (repo / "clf.v1.engine" / "config.pbtxt").read_text()
    # A generous SLO: every trial of the tiny engine meets it, so the pick is by throughput.
    result = tune(repo, MODEL, slo_p99_ms=2000, **GRID, **LOAD, out_dir=tmp_path_factory.mktemp("report"),
                  apply=True)
    return result, before


def test_report_has_every_trial_and_the_winner_meets_the_slo(swept: tuple[TuneResult, str]):
    result, _ = swept
    assert len(result.trials) == 4 and all(t.error is None for t in result.trials)
    assert result.best is not None and result.best.meets(result.slo_p99_ms)
    assert all(lv.p99_ms <= result.slo_p99_ms for lv in result.best.levels)
    assert result.best.throughput_rps == max(t.throughput_rps for t in result.trials)
    report = json.loads(result.report_json.read_text())
    grid = {(t["instances"], t["max_batch_size"], t["max_queue_delay_us"]) for t in report["trials"]}
    assert grid == {(i, 4, d) for i in (1, 2) for d in (0, 1000)}
    assert all([lv["concurrency"] for lv in t["levels"]] == [1, 2] for t in report["trials"])
    markdown = result.report_md.read_text()
    assert markdown.count("\n| ") == 5 and "**best**" in markdown  # header + 4 trials


def test_apply_writes_the_winner_into_the_repository(repo: Path, swept: tuple[TuneResult, str]):
    result, before = swept
    assert result.applied_to == repo / "clf.v1.engine" / "config.pbtxt"
    after = result.applied_to.read_text()
    assert after != before
    engine = text_format.Parse(after, pb.ModelConfig())
    best = result.best.settings
    assert engine.max_batch_size == best.max_batch_size
    assert engine.instance_group[0].count == best.instances
    assert engine.dynamic_batching.max_queue_delay_microseconds == best.max_queue_delay_us
    assert "engineforge tune" in engine.parameters["why.instances"].string_value
    assert engine.model_warmup and (repo / "clf.v1.engine" / "warmup").is_dir()
    # Tuning keeps the published text layout (one-hop: the engine tokenizes, no tokenizer model appears); the entry
    # points take the batch as an explicit dim, and a rollback to this version restores the tuned entry points too.
    assert engine.parameters["text_path"].string_value == "one-hop" and not (repo / "clf.v1.tokenizer").exists()
    assert [i.name for i in engine.input if i.name == "TEXT"] == ["TEXT"]
    ensemble = (repo / MODEL / "config.pbtxt").read_text()
    assert text_format.Parse(ensemble, pb.ModelConfig()).max_batch_size == 0
    assert (repo / MODEL / "entries" / "1" / f"{MODEL}.pbtxt").read_text() == ensemble


def test_impossible_slo_is_a_typed_error_naming_the_closest(repo: Path, tmp_path: Path):
    config = (repo / "clf.v1.engine" / "config.pbtxt").read_text()
    with pytest.raises(SLONotMetError, match=r"no configuration met the p99 SLO of 0.0005 ms .*closest was") as err:
        tune(repo, MODEL, slo_p99_ms=0.0005, instances=(1,), max_batch_sizes=(4,), queue_delays_us=(0,),
             concurrency=(1,), duration_s=0.5, warmup_s=0.2, out_dir=tmp_path, apply=True)
    assert isinstance(err.value, EngineforgeError) and err.value.best is not None
    assert (tmp_path / "tune_report.md").is_file()
    assert (repo / "clf.v1.engine" / "config.pbtxt").read_text() == config  # nothing applied
