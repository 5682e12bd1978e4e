"""prune's latency search compares its target with ms per request on the build's traffic profile (as select_runtime
ranks runtimes), keeping the 1x128 median as a reference; `latency_on = "fixed"` compares with 1x128 as before."""

from __future__ import annotations

import importlib
from types import SimpleNamespace
from typing import Any

import pytest

from engineforge.build.steps import PruneConfig
from engineforge.engines.traffic import TrafficProfile
from engineforge.errors import ConfigError

# The package, not the step function of the same name that engineforge.build.steps exports.
prune_step = importlib.import_module("engineforge.build.steps.prune")
PROFILE = TrafficProfile("eval data e.jsonl", lengths=(12, 20, 31), max_sequence_length=128)


@pytest.fixture()
def levels(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Sparsity level t = k/8 -> latency: short changing-length requests are cheaper than 1x128, so the profile
    meets a 5 ms target at less pruning (t = 2/8) than the fixed shape does (t = 5/8)."""
    measured: list[float] = []

    def measure(ctx: Any, level: float) -> dict[str, float]:
        measured.append(level)
        k = level * 8
        figures = {"median_ms_1x128": 10.0 - k}
        if ctx.traffic_profile is not None:
            figures["profile_ms_per_request"] = 6.0 - 0.5 * k
        return figures

    monkeypatch.setattr(prune_step, "plan_pruning", lambda importance, config, heads, ffn: SimpleNamespace(
        head_sparsity=heads, ffn_sparsity=ffn, level=heads / config.head_sparsity))
    monkeypatch.setattr(prune_step, "pruned_copy", lambda model, plan: plan.level)
    monkeypatch.setattr(prune_step, "measure_latency_ms", measure)
    return measured


def _search(profile: TrafficProfile | None, **options: Any) -> dict[str, Any]:
    ctx = SimpleNamespace(traffic_profile=profile, model=None, config=SimpleNamespace(intra_op_threads=2))
    config = PruneConfig(head_sparsity=0.5, ffn_sparsity=0.5, target_latency_ms=5.0, **options)
    return prune_step.search_for_latency(ctx, None, config)[1]  # type: ignore[arg-type]


def test_the_target_is_met_on_the_traffic_profile_with_1x128_as_reference(levels):
    found = _search(PROFILE)
    assert found["chosen_level"] == 0.25 and found["latency_on"] == "profile_ms_per_request"
    assert found["latency_ms"] == 5.0 and "traffic profile" in found["latency_setup"]
    assert all({"median_ms_1x128", "profile_ms_per_request"} <= set(row) for row in found["measurements"])


def test_latency_on_fixed_or_no_profile_compares_with_1x128(levels):
    assert _search(PROFILE, latency_on="fixed")["chosen_level"] == 0.625
    found = _search(None)
    assert found["chosen_level"] == 0.625 and found["latency_on"] == "median_ms_1x128"


def test_latency_on_is_validated_with_the_fix():
    with pytest.raises(ConfigError, match=r"prune.latency_on='p50': use 'profile'"):
        PruneConfig(latency_on="p50")
