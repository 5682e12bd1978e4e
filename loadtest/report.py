"""The report data: the JSON-shaped dict every report is rendered from (`report_dict`), the JSON file itself, the
CSV and raw-record files, and the per-request series the HTML plots need.

A report written earlier can be reloaded with `load_json_report` and re-rendered (loadtest/markdown_report.py,
loadtest/html_report.py) or compared with another variant's; loadtest/report_files.py writes them all.
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from engineforge.errors import DataError

from . import csv_report
from .records import MEASURE
from .results import LoadTestResult

SCHEMA = "engineforge.loadtest/v1"

Report = Mapping[str, Any]


def report_dict(result: LoadTestResult) -> dict[str, Any]:
    """The JSON-shaped report: settings, per-level metrics, timestamps, server and environment."""
    cfg = result.config
    return {
        "schema": SCHEMA,
        "started_at": result.started_at,
        "finished_at": result.finished_at,
        "server": {"url": cfg.url, "protocol": "grpc", "model": cfg.model,
                   "triton_version": ((result.model_metadata or {}).get("server") or {}).get("version")},
        "model": model_identity(result.model_metadata),
        "label": cfg.label,
        "settings": cfg.to_dict(),
        "levels": [level.to_dict() for level in result.levels],
        "slo": result.slo,
        "model_metadata": result.model_metadata,
        "environment": {
            "host": platform.node(),
            "python": platform.python_version(),
            "tritonclient": _version("tritonclient"),
        },
    }


def model_identity(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """What was measured: the model's versions and, for an engineforge publication, its build id, precision and
    runtime (from the model config's parameters; an ensemble carries its build id)."""
    metadata = metadata or {}
    parameters = metadata.get("parameters") or {}
    return {"name": metadata.get("name"), "versions": metadata.get("versions"),
            **{key: parameters.get(key) for key in ("build_id", "precision", "runtime", "task")}}


def write_json_report(result: LoadTestResult | Report, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(as_report(result), indent=2) + "\n", encoding="utf-8")
    return path


def load_json_report(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read load-test report {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise DataError(f"{path} is not an engineforge load-test report (expected schema {SCHEMA})")
    return data


def csv_rows(result: LoadTestResult | Report) -> list[dict[str, Any]]:
    """One row per level in perf_analyzer's columns, then ours (loadtest/csv_report.py)."""
    return csv_report.csv_rows(as_report(result))


def write_csv_report(result: LoadTestResult | Report, path: str | Path) -> Path:
    return csv_report.write_csv(as_report(result), path)


def write_records_jsonl(result: LoadTestResult, path: str | Path) -> Path:
    """Every raw record of every level (warm-up and drain included, tagged by phase)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for level in result.levels:
            for record in level.records:
                f.write(json.dumps(record.to_dict()) + "\n")
    return path


def measured_latencies_ms(result: LoadTestResult) -> dict[str, list[float]]:
    """Each level's successful measured latencies in ms (open loop: from the scheduled send)."""
    out = {}
    for level in result.levels:
        name = f"{level.rate:g} req/s" if level.rate else f"concurrency {level.concurrency}"
        out[name] = [1000 * ((r.end_s - r.scheduled_s) if level.rate and r.scheduled_s is not None else r.latency_s)
                     for r in level.records if r.ok and r.phase == MEASURE]
    return out


def latency_timeline(result: LoadTestResult) -> dict[str, dict[str, list[float]]]:
    """Per level, each measured request's send time (s from the level's first; open loop: its scheduled send) and
    latency in ms, successes and failures apart: the HTML report plots them, so a stall shows where it happened."""
    out = {}
    for level in result.levels:
        rows = [r for r in level.records if r.phase == MEASURE]
        sent = [r.scheduled_s if level.rate and r.scheduled_s is not None else r.start_s for r in rows]
        t0 = min(sent, default=0.0)
        series: dict[str, list[float]] = {"t_s": [], "ms": [], "failed_t_s": [], "failed_ms": []}
        for r, t in zip(rows, sent, strict=True):
            ms = 1000 * ((r.end_s - r.scheduled_s) if level.rate and r.scheduled_s is not None else r.latency_s)
            series["t_s" if r.ok else "failed_t_s"].append(t - t0)
            series["ms" if r.ok else "failed_ms"].append(ms)
        out[f"{level.rate:g} req/s" if level.rate else f"concurrency {level.concurrency}"] = series
    return out


def default_stem(result: LoadTestResult) -> str:
    cfg = result.config
    name = "_".join(x for x in ("loadtest", cfg.model, cfg.label, cfg.mode) if x)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def as_report(result: LoadTestResult | Report) -> Report:
    """The JSON-shaped report of a run, or the report itself (every renderer takes either)."""
    return report_dict(result) if isinstance(result, LoadTestResult) else result


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
