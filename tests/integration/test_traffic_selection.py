"""The traffic profile of a build: recorded in engine.json and the build report, read from --traffic-data when
given, and what select_runtime ranks runtimes on (a runtime fast only at one fixed shape loses)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoTokenizer

from engineforge.build.cli import main as build_engine
from engineforge.build.config import BuildConfig
from engineforge.build.presets import load_recipe
from engineforge.build.report import BuildReport
from engineforge.build.runner import run_build
from engineforge.build.steps import ExportConfig, SelectRuntimeConfig, ValidateConfig
from engineforge.engines import load_engine, registry
from engineforge.engines.engine_spec import EngineSpec
from engineforge.engines.traffic import TrafficProfile
from tests.helpers.tiny_checkpoint import EVAL_TEXTS

SHORT_REQUESTS = ["hi", "refund?", "where is my parcel", "ok thanks", "locked out", "cancel order 55"]


def _recorded(out: Path) -> tuple[TrafficProfile, dict[str, Any], str]:
    """(engine.json's profile, the JSON report's, the Markdown report)."""
    spec = EngineSpec.load(out / "engine")
    assert spec.traffic_profile is not None
    return (TrafficProfile.from_dict(spec.traffic_profile), BuildReport.load(out).traffic_profile or {},
            (out / "build_report.md").read_text())


def test_the_profile_of_the_eval_texts_is_recorded_in_engine_json_and_the_report(tiny_checkpoint, tiny_eval_data,
                                                                                tmp_path):
    out = tmp_path / "out"
    run_build(BuildConfig(checkpoint=tiny_checkpoint, output_dir=out, eval_data=tiny_eval_data,
                          steps=(ExportConfig(), ValidateConfig())))
    profile, reported, markdown = _recorded(out)
    assert profile.source == f"eval data {tiny_eval_data}" and profile.count == len(EVAL_TEXTS)
    assert profile.batch_sizes == (1, 4) and profile.max_sequence_length == 128
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    assert profile.lengths == tuple(len(ids) for ids in tokenizer(list(EVAL_TEXTS))["input_ids"])  # as served
    assert reported == {"source": profile.source, "batch_sizes": [1, 4], "max_sequence_length": 128,
                        **profile.summary()}
    assert "## Traffic profile" in markdown and f"| {len(EVAL_TEXTS)} | eval data {tiny_eval_data} |" in markdown


def test_traffic_data_replaces_the_eval_texts_in_the_recorded_profile(tiny_checkpoint, tiny_eval_data, tmp_path,
                                                                      capsys):
    traffic = tmp_path / "requests.jsonl"
    # Labels are not needed, and any given are not checked against the model's.
    traffic.write_text("".join(json.dumps({"text": t, "label": "not-a-model-label"}) + "\n" for t in SHORT_REQUESTS))
    out = tmp_path / "out"
    code = build_engine([str(tiny_checkpoint), "--preset", "fp32", "--eval-data", str(tiny_eval_data),
                         "--traffic-data", str(traffic), "--no-publish", "-o", str(out)])
    assert code == 0
    profile, reported, markdown = _recorded(out)
    assert profile.source == f"traffic data {traffic}" and profile.count == len(SHORT_REQUESTS)
    assert max(profile.lengths) <= 7 and reported["texts"] == len(SHORT_REQUESTS)
    assert f"traffic data {traffic}" in markdown
    assert f"traffic profile: {profile.describe()}" in capsys.readouterr().err
    # The recipe repeats the build with the same traffic; the manifest proves which file it was.
    assert load_recipe(out / "recipe.toml")["traffic_data"] == traffic.resolve()
    assert json.loads((out / "manifest.json").read_text())["data"]["traffic"]["path"] == str(traffic)


# Toy CPU candidates: ONNX Runtime on the exported graph plus a sleep, so that which one is faster depends only on
# how shapes change. Sleeps are small: the tiny model's own calls take ~0.1 ms.
SHAPE_CHANGE_S, STEADY_S = 0.008, 0.002
FIXED_FAST, STEADY = "toy-fixed-fast", "toy-steady"


class SleepyEngine:
    """An ORT engine that sleeps `steady_s` on every call and `change_s` more whenever the input shape differs from
    its previous call's (as OpenVINO's CPU plugin pays ~1 ms per shape change)."""

    def __init__(self, inner: Any, runtime: str, steady_s: float, change_s: float) -> None:
        self.inner, self.runtime, self.steady_s, self.change_s = inner, runtime, steady_s, change_s
        self.input_names, self.output_names = inner.input_names, inner.output_names
        self.last_shape: tuple[int, ...] | None = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        shape = feeds["input_ids"].shape
        delay = self.steady_s + (self.change_s if shape != self.last_shape else 0.0)
        if delay:  # sleep(0) still yields the core, for a scheduler tick on a busy machine
            time.sleep(delay)
        self.last_shape = shape
        return self.inner.run(feeds)

    def settings(self) -> dict[str, str]:
        return {"runtime": self.runtime}


def _toy_loader(runtime: str, steady_s: float, change_s: float) -> Any:
    def load(path: Path, threads: int) -> SleepyEngine:
        del threads  # one thread: two spinning ORT pools on a shared 2-core machine would blur the sleeps
        return SleepyEngine(load_engine(path, "onnxruntime", 1), runtime, steady_s, change_s)
    return load


@pytest.fixture()
def toy_candidates(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Two CPU candidates, registered for one test: the registry is global, monkeypatch restores it."""
    monkeypatch.setattr(registry, "_RUNTIMES", dict(registry._RUNTIMES))
    for name, steady_s, change_s in ((FIXED_FAST, 0.0, SHAPE_CHANGE_S), (STEADY, STEADY_S, 0.0)):
        registry.register_runtime(name, model_kind=registry.MODEL_ONNX, description="toy: ORT plus a sleep",
                                  cpu_candidate=True)(_toy_loader(name, steady_s, change_s))
    return FIXED_FAST, STEADY


def _select(checkpoint: Path, eval_data: Path, out: Path, rank_on: str) -> dict[str, Any]:
    report = run_build(BuildConfig(checkpoint=checkpoint, output_dir=out, eval_data=eval_data,
                                   steps=(ExportConfig(), SelectRuntimeConfig(candidates=(FIXED_FAST, STEADY),
                                                                              iterations=20, rank_on=rank_on))))
    return report.step("select_runtime").details


def test_a_runtime_fast_only_at_one_fixed_shape_loses_on_the_traffic_profile(tiny_checkpoint, tiny_eval_data,
                                                                             tmp_path, toy_candidates):
    select = _select(tiny_checkpoint, tiny_eval_data, tmp_path / "profile", "profile")
    rows = {r["runtime"]: r for r in select["candidates"]}
    assert select["chosen"] == STEADY and select["ranked_on"] == "profile_ms_per_request"
    # The fixed-shape reference column, which builds ranked on before, says the opposite.
    assert rows[FIXED_FAST]["median_ms_1x128"] < rows[STEADY]["median_ms_1x128"]
    assert rows[FIXED_FAST]["profile_ms_per_request"] > rows[STEADY]["profile_ms_per_request"]
    assert set(rows[STEADY]["profile_median_ms_by_batch"]) == {"1", "4"}
    assert EngineSpec.load(tmp_path / "profile" / "engine").runtime == STEADY
    # Ranked on the fixed shape, as before, the other one would have been served.
    assert _select(tiny_checkpoint, tiny_eval_data, tmp_path / "fixed", "fixed")["chosen"] == FIXED_FAST
