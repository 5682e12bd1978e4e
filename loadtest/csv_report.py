"""The load-test CSV: perf_analyzer's columns (latencies in µs) where they exist, then ours (max latency, the rate
actually sent and the limit an open-loop level hit, client CPU, correctness). Rendered from the report dict."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# perf_analyzer's CSV columns (latencies in µs), then ours.
CSV_COLUMNS = ("Concurrency", "Request Rate", "Inferences/Second", "Client Send", "Network+Server Send/Recv",
               "Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output",
               "Client Recv", "p50 latency", "p90 latency", "p95 latency", "p99 latency", "Avg latency",
               "p99.9 latency", "Errors", "Requests/Second", "Client CPU %", "Generator Processes", "Correct %",
               "Max latency", "Sent Requests/Second", "Limit")


def _us(value: float | None) -> str:
    return "" if value is None else str(round(value * 1000))


def _stage(parts: list[dict[str, Any]], name: str) -> str:
    values = [p[f"{name}_ms"] for p in parts if p[f"{name}_ms"] is not None]
    return _us(sum(values)) if values else ""


def csv_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per level; server times are Triton's, summed over an ensemble's models as perf_analyzer does (the
    ensemble's own row when it runs nothing else). Requests/Second is the throughput: successful responses
    completed inside the window per second; open loop adds the rate sent."""
    rows = []
    for level in report["levels"]:
        m = level["metrics"]
        server = level.get("server") or []
        parts = server[1:] or server[:1]
        schedule = level.get("schedule") or {}
        rows.append({"Concurrency": "" if level.get("rate") else level["concurrency"],
                     "Request Rate": level.get("rate") or "",
                     "Inferences/Second": round(m["throughput_items_per_s"], 3),
                     "Client Send": "", "Network+Server Send/Recv": "", "Server Queue": _stage(parts, "queue"),
                     "Server Compute Input": _stage(parts, "compute_input"),
                     "Server Compute Infer": _stage(parts, "compute_infer"),
                     "Server Compute Output": _stage(parts, "compute_output"), "Client Recv": "",
                     **{f"p{p} latency": _us(m.get(f"latency_p{p}_ms")) for p in (50, 90, 95, 99)},
                     "Avg latency": _us(m.get("latency_mean_ms")), "p99.9 latency": _us(m.get("latency_p999_ms")),
                     "Errors": m["errors"], "Requests/Second": round(m["throughput_rps"], 3),
                     "Client CPU %": "" if level.get("client_cpu_percent") is None
                     else round(level["client_cpu_percent"], 1),
                     "Generator Processes": level.get("workers", 1),
                     "Correct %": "" if m.get("accuracy") is None else round(100 * m["accuracy"], 3),
                     "Max latency": _us(m.get("latency_max_ms")),
                     "Sent Requests/Second": schedule.get("sent_rps", ""), "Limit": schedule.get("limit") or ""})
    return rows


def write_csv(report: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(report))
    return path
