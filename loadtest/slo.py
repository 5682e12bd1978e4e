"""Service-level objectives for CI pipelines: `--slo "p99<50ms,errors<1%"` is checked against every level and
sets the exit code; `--find-max` searches the highest concurrency or rate that meets it.

Conditions: a metric, `<` or `>` (`<=`, `>=`), and a value with its unit. Metrics: p50 p90 p95 p99 p99.9 mean
max (latency; ms or s), errors (error rate; %), rps (throughput; req/s).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engineforge.errors import ConfigError

_METRICS = {"p50": "latency_p50_ms", "p90": "latency_p90_ms", "p95": "latency_p95_ms", "p99": "latency_p99_ms",
            "p99.9": "latency_p999_ms", "mean": "latency_mean_ms", "max": "latency_max_ms",
            "errors": "error_rate", "rps": "throughput_rps"}
_UNITS = {"ms": 1.0, "s": 1000.0, "%": 0.01, "": 1.0, "req/s": 1.0, "rps": 1.0}
_CONDITION = re.compile(r"^\s*(p50|p90|p95|p99\.9|p99|mean|max|errors|rps)\s*(<=|>=|<|>)\s*([0-9.]+)\s*"
                        r"(ms|s|%|req/s|rps)?\s*$")


@dataclass(frozen=True)
class Condition:
    metric: str  # as written, e.g. "p99"
    op: str
    limit: float  # in the metric's own unit (ms, fraction, req/s)
    text: str

    def value(self, metrics: Mapping[str, Any]) -> float | None:
        return metrics.get(_METRICS[self.metric])

    def holds(self, metrics: Mapping[str, Any]) -> bool:
        value = self.value(metrics)
        if value is None:  # nothing succeeded: no latency, so no latency objective can hold
            return False
        return {"<": value < self.limit, "<=": value <= self.limit, ">": value > self.limit,
                ">=": value >= self.limit}[self.op]


def parse_slo(text: str) -> tuple[Condition, ...]:
    """'p99<50ms, errors<1%' (also 'and' between conditions) -> conditions; ConfigError names the bad part."""
    parts = [p for p in re.split(r",|\band\b", text) if p.strip()]
    if not parts:
        raise ConfigError(f"--slo {text!r}: give conditions like 'p99<50ms' or 'p99<50ms,errors<1%'")
    conditions = []
    for part in parts:
        match = _CONDITION.match(part)
        if not match:
            raise ConfigError(f"--slo: cannot read {part.strip()!r}; write METRIC<VALUE with METRIC one of "
                              f"{', '.join(_METRICS)}, e.g. 'p99<50ms', 'errors<1%', 'rps>100'")
        metric, op, number, unit = match.group(1), match.group(2), float(match.group(3)), match.group(4) or ""
        latency = metric not in ("errors", "rps")
        if latency and unit not in ("ms", "s", ""):
            raise ConfigError(f"--slo {part.strip()!r}: a latency takes ms or s")
        if metric == "errors" and unit not in ("%", ""):
            raise ConfigError(f"--slo {part.strip()!r}: the error rate takes %")
        limit = number * (_UNITS[unit] if latency or metric == "errors" else 1.0)
        if metric == "errors" and not unit:
            limit = number  # a bare fraction
        conditions.append(Condition(metric, op, limit, part.strip()))
    return tuple(conditions)


def level_name(level: Mapping[str, Any]) -> str:
    return f"rate {level['rate']:g} req/s" if level.get("rate") else f"concurrency {level['concurrency']}"


def violations(conditions: Sequence[Condition], levels: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per (level, condition) that misses, with the measured value (pure)."""
    out = []
    for level in levels:
        for condition in conditions:
            if not condition.holds(level["metrics"]):
                value = condition.value(level["metrics"])
                shown = "nothing succeeded" if value is None else (
                    f"{value:.2%}" if condition.metric == "errors" else f"{value:.2f}")
                out.append(f"SLO {condition.text} missed at {level_name(level)}: {condition.metric} {shown}")
    return out


def verdict(conditions: Sequence[Condition], levels: Sequence[Mapping[str, Any]], text: str) -> dict[str, Any]:
    """The SLO's verdict for the reports (pure): met or not, and per level each condition's measured value."""
    rows = []
    for level in levels:
        checks = [{"condition": c.text, "metric": c.metric, "op": c.op, "value": c.value(level["metrics"]),
                   "met": c.holds(level["metrics"])} for c in conditions]
        rows.append({"level": level_name(level), "met": all(c["met"] for c in checks), "checks": checks})
    return {"objective": text, "met": all(row["met"] for row in rows), "levels": rows,
            "missed": violations(conditions, levels)}


def verdict_line(slo: Mapping[str, Any], *, markdown: bool = False) -> str:
    """One line: "SLO 'p99<50ms' met at every level (2 levels; worst p99 3.10 ms at concurrency 4)"."""
    rows = slo["levels"]
    met = sum(row["met"] for row in rows)
    objective = f"`{slo['objective']}`" if markdown else repr(slo["objective"])
    head = (f"SLO {objective} met at every level" if slo["met"] else
            f"SLO {objective} missed at {len(rows) - met} of {len(rows)} levels")
    search = slo.get("search")
    if search:  # --find-max: the probes are meant to miss past the best
        head = f"SLO {objective}: " + (f"highest {search['what']} meeting it {search['best']:g}"
                                       if search["best"] is not None else f"no {search['what']} probed meets it")
        head += f", {met} of {len(rows)} probes met it"
    worst = [f"{len(rows)} level{'s' * (len(rows) != 1)}"]
    for i, check in enumerate(rows[0]["checks"] if rows else ()):
        known = [(row["checks"][i]["value"], row["level"]) for row in rows if row["checks"][i]["value"] is not None]
        if not known:
            worst.append(f"{check['metric']}: nothing succeeded")
            continue
        value, name = min(known) if ">" in check["op"] else max(known)  # for rps>N the worst is the lowest
        shown = f"{value:.2%}" if check["metric"] == "errors" else (
            f"{value:.1f} req/s" if check["metric"] == "rps" else f"{value:.2f} ms")
        worst.append(f"worst {check['metric']} {shown} at {name}")
    return f"{head} ({'; '.join(worst)})"


def find_max(config: Any, conditions: Sequence[Condition], max_probes: int = 8, log: Any = None) -> dict[str, Any]:
    """Highest concurrency (closed loop) or rate (open loop) whose level meets every condition: double from the
    first level until one misses, then bisect (integers for concurrency, 5 % for rates). One load-test level per
    probe; returns {"best", "probes": [{"value", "met", "level"}], "levels"}."""
    import dataclasses

    from .runner import run_loadtest

    open_loop = bool(config.rates)
    start = config.rates[0] if open_loop else config.concurrency[0]
    probes: list[dict[str, Any]] = []

    def probe(value: float) -> bool:
        settings = {"rates": (float(value),)} if open_loop else {"concurrency": (int(value),)}
        level = run_loadtest(dataclasses.replace(config, **settings)).levels[0]
        met = not violations(conditions, [level.to_dict()])
        probes.append({"value": value, "met": met, "level": level})
        if log:
            log(f"find-max: {'rate' if open_loop else 'concurrency'} {value:g} {'meets' if met else 'misses'} the SLO")
        return met

    good, bad = None, None
    value = start
    while len(probes) < max_probes and bad is None:
        if probe(value):
            good, value = value, value * 2
        else:
            bad = value
    while good is not None and bad is not None and len(probes) < max_probes:
        if (open_loop and bad / good <= 1.05) or (not open_loop and bad - good <= 1):
            break
        middle = (good + bad) / 2 if open_loop else (good + bad) // 2
        good, bad = (middle, bad) if probe(middle) else (good, middle)
    return {"best": good, "first_miss": bad, "open_loop": open_loop,
            "probes": [{"value": p["value"], "met": p["met"]} for p in probes],
            "levels": [p["level"] for p in probes]}
