"""The prose parts of a report, shared by Markdown and HTML: the warnings under the results (limits hit, errors,
reloads, stability, a busy generator) and the `--slo` verdict with each level's measured values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Above this client CPU use (% of one core) the load generator itself may limit throughput.
CLIENT_CPU_WARN_PERCENT = 85.0


def slo_section(slo: Mapping[str, Any] | None) -> list[str]:
    """Markdown lines for `--slo`'s verdict ([] without one): the verdict, then each level's measured values."""
    if not slo:
        return []
    from .slo import verdict_line

    lines = ["", "## SLO", "", f"- {verdict_line(slo, markdown=True)}"]
    for row in slo["levels"]:
        values = ", ".join(f"{c['metric']} {_slo_value(c['metric'], c['value'])}"
                           + ("" if c["met"] else f" (misses `{c['condition']}`)") for c in row["checks"])
        lines.append(f"- {row['level']}: {'met' if row['met'] else 'MISSED'} — {values}")
    return lines


def _slo_value(metric: str, value: float | None) -> str:
    if value is None:
        return "nothing succeeded"
    return f"{value:.2%}" if metric == "errors" else f"{value:.1f} req/s" if metric == "rps" else f"{value:.2f} ms"


def notes(levels: Sequence[Mapping[str, Any]]) -> list[str]:
    from .slo import level_name
    from .stability import stability_note

    notes = []
    for level in levels:
        c, m, schedule = level_name(level), level["metrics"], level.get("schedule") or {}
        if stability_note(level):
            notes.append(f"- {c}: {stability_note(level)}")
        if schedule.get("shortfall"):
            notes.append(f"- {c}: limit {schedule['limit']}: {schedule['shortfall']}")
        if level.get("aborted"):
            notes.append(f"- {c}: {level['aborted']}")
        if m["errors"]:
            kinds = ", ".join(f"{n} {kind}" for kind, n in m["errors_by_kind"].items())
            if m.get("errors_by_status"):
                kinds += "; gRPC status " + ", ".join(f"{code} ×{n}" for code, n in m["errors_by_status"].items())
            examples = "; ".join(f"`{e}`" for e in m["error_examples"])
            notes.append(f"- {c}: {m['errors']} failed requests ({kinds}), e.g. {examples}")
        if m.get("reload_retried"):
            notes.append(f"- {c}: {m['reload_retried']} requests met the model reloading and were sent again until it "
                         "answered (the wait is in their latency)")
        if m["requests"] == 0 and not level.get("aborted"):
            notes.append(f"- {c}: no request completed inside the measurement window")
        cpu, processes = level.get("client_cpu_percent"), level.get("workers") or 1
        if cpu is not None and cpu / processes >= CLIENT_CPU_WARN_PERCENT and not schedule.get("shortfall"):
            notes.append(
                f"- {c}: each of the {processes} load-generator process(es) used {cpu / processes:.0f}% "
                f"of a CPU core; the generator may be the bottleneck (--workers {processes + 1} if cores are free, "
                "or run it on another machine)"
            )
        if level.get("cancelled_requests"):
            notes.append(
                f"- {c}: {level['cancelled_requests']} requests were still in flight after the "
                "drain timeout and were cancelled"
            )
    return notes
