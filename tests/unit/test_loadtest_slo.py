"""SLO conditions: parsing with the fix in the message, and checks per level (pure)."""

from __future__ import annotations

import pytest

from engineforge.errors import ConfigError
from engineforge.loadtest.slo import parse_slo, violations


def _level(concurrency: int, **metrics: float | None) -> dict:
    base = {"latency_p99_ms": 20.0, "latency_p50_ms": 5.0, "error_rate": 0.0, "throughput_rps": 200.0}
    return {"concurrency": concurrency, "metrics": base | metrics}


def test_conditions_read_units_and_combine():
    conditions = parse_slo("p99<50ms, errors<1% and rps>=100, p99.9<0.2s")
    assert [(c.metric, c.op, c.limit) for c in conditions] == [("p99", "<", 50.0), ("errors", "<", 0.01),
                                                              ("rps", ">=", 100.0), ("p99.9", "<", 200.0)]


@pytest.mark.parametrize("text,message", [("p98<5ms", "cannot read 'p98<5ms'"), ("p99<5%", "a latency takes ms or s"),
                                          ("", "give conditions like")])
def test_bad_conditions_name_the_fix(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_slo(text)


def test_violations_name_the_level_the_condition_and_the_value():
    conditions = parse_slo("p99<50ms,errors<1%")
    levels = [_level(1), _level(4, latency_p99_ms=63.24), _level(8, latency_p99_ms=None, error_rate=1.0),
              {"concurrency": 0, "rate": 200.0, "metrics": _level(0)["metrics"] | {"error_rate": 0.02}}]
    assert violations(conditions, levels) == [
        "SLO p99<50ms missed at concurrency 4: p99 63.24",
        "SLO p99<50ms missed at concurrency 8: p99 nothing succeeded",
        "SLO errors<1% missed at concurrency 8: errors 100.00%",
        "SLO errors<1% missed at rate 200 req/s: errors 2.00%",
    ]


def test_the_verdict_names_the_worst_level_and_a_find_max_search():
    from engineforge.loadtest.slo import verdict, verdict_line

    levels = [{"concurrency": c, "metrics": {"latency_p99_ms": p99, "error_rate": 0.0, "throughput_rps": rps}}
              for c, p99, rps in ((1, 5.0, 100.0), (4, 60.0, 300.0))]
    slo = verdict(parse_slo("p99<50ms,rps>150"), levels, "p99<50ms,rps>150")
    assert not slo["met"] and len(slo["missed"]) == 2
    assert verdict_line(slo) == ("SLO 'p99<50ms,rps>150' missed at 2 of 2 levels (2 levels; worst p99 60.00 ms at "
                                 "concurrency 4; worst rps 100.0 req/s at concurrency 1)")
    slo["search"] = {"what": "concurrency", "best": None, "first_miss": 1}
    assert verdict_line(slo).startswith("SLO 'p99<50ms,rps>150': no concurrency probed meets it, 0 of 2 probes")
