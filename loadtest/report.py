"""Reports: a machine-readable JSON file, a Markdown summary, a CSV, a PNG plot, a self-contained HTML page and
optionally raw records. Each carries the max latency beside the percentiles and, with `--slo`, its verdict.

Everything is rendered from the JSON-shaped dict (`report_dict`), so a report written earlier can
be reloaded with `load_json_report` and re-rendered or compared with another variant's.
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
from .report_notes import notes as _notes
from .report_notes import slo_section
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
    path.write_text(json.dumps(_as_report(result), indent=2) + "\n", encoding="utf-8")
    return path


def load_json_report(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read load-test report {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise DataError(f"{path} is not an engineforge load-test report (expected schema {SCHEMA})")
    return data


def markdown_table(result: LoadTestResult | Report) -> str:
    """One row per level (concurrency, or target rate in open loop: with the rate actually sent, whether it went
    out on time and the limit hit); latencies in ms over successful requests (open loop: from each request's
    scheduled send time); throughput: successful responses completed inside the window per second."""
    report = _as_report(result)
    batched = report["settings"].get("batch_size", 1) > 1
    open_loop = any(level.get("rate") for level in report["levels"])
    header = ["rate (req/s)", "sent (req/s)", "sent on time", "limit"] if open_loop else ["concurrency"]
    header += ["requests", "errors", "throughput (req/s)"]
    header += ["items/s"] if batched else []
    header += ["p50 ms", "p90 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms", "client CPU %"]
    checked = any(level["metrics"].get("checked_items") for level in report["levels"])
    header += ["correct %"] if checked else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for level in report["levels"]:
        m = level["metrics"]
        if open_loop:
            schedule = level.get("schedule") or {}
            cells = [f"{level['rate']:g}", f"{schedule.get('sent_rps', 0):.1f}",
                     "yes" if schedule.get("kept_rate") else "no", schedule.get("limit") or "—"]
        else:
            cells = [str(level["concurrency"])]
        cells += [str(m["requests"]), str(m["errors"]), f"{m['throughput_rps']:.1f}"]
        cells += [f"{m['throughput_items_per_s']:.1f}"] if batched else []
        cells += [_ms(m.get(f"latency_p{p}_ms")) for p in (50, 90, 95, 99, 999)] + [_ms(m.get("latency_max_ms"))]
        cpu = level.get("client_cpu_percent")
        cells += ["—" if cpu is None else f"{cpu:.0f}"]
        if checked:
            accuracy = m.get("accuracy")
            cells += ["—" if accuracy is None else f"{100 * accuracy:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def server_table(result: LoadTestResult | Report) -> str:
    """Triton's per-model breakdown of every level ("" when the server gave no statistics)."""
    report = _as_report(result)
    rows = []
    for level in report["levels"]:
        name = f"{level['rate']:g} req/s" if level.get("rate") else f"c{level['concurrency']}"
        for model in level.get("server") or ():
            rows.append(f"| {name} | {model['model']} | {model['requests']} | {_ms(model['queue_ms'])} | "
                        f"{_ms(model['compute_input_ms'])} | {_ms(model['compute_infer_ms'])} | "
                        f"{_ms(model['compute_output_ms'])} | {model['avg_batch'] or '—'} |")
    if not rows:
        return ""
    return "\n".join(["| level | model | requests | queue ms | compute in ms | infer ms | compute out ms | avg batch |",
                      "|---|---|---:|---:|---:|---:|---:|---:|", *rows])


def markdown_report(result: LoadTestResult | Report, plot_name: str | None = None) -> str:
    report = _as_report(result)
    s = report["settings"]
    title = f"# Load test: `{s['model']}`" + (f" ({report['label']})" if report.get("label") else "")
    if s["mode"] == "tokens":
        mode = (f"tokens — synthetic token ids, seq len {s['seq_len']} (padded per batch); measures the engine alone "
                "(no tokenizer)")
    else:
        mode = f"text — raw text to the model, tokenization included ({s['n_texts']} texts, {s['texts_source']})"
        if s.get("labels_checked"):
            mode += "; every answer's label checked against the file's (correct %, apart from latency)"
    out = [
        title,
        "",
        f"- Server: `{report['server']['url']}` (gRPC, KServe v2"
        + (f"; Triton {report['server']['triton_version']})" if report["server"].get("triton_version") else ")"),
        *_model_line(report.get("model") or {}),
        f"- Mode: {mode}",
        (f"- Open loop at {', '.join(f'{r:g}' for r in s['rates'])} req/s ({s.get('arrival', 'constant')} "
         "arrivals; latency from each request's scheduled send)" if s.get("rates") else "- Closed loop")
        + f", batch size {s['batch_size']}; per level: warm-up {s['warmup_s']:g} s (discarded), "
        f"measured {s['duration_s']:g} s; request timeout {s['timeout_s']:g} s",
        f"- Load generator: {s.get('workers', 1)} process(es); client CPU in % of one core, all processes together",
        f"- Run: {report['started_at']} → {report['finished_at']}",
        "",
        "## Results",
        "",
        markdown_table(report),
        "",
        "Latency is the client-observed gRPC round trip of successful requests (HDR-histogram percentiles, and the "
        "maximum; in open loop from each request's scheduled send); throughput is successful responses completed "
        "inside the measurement window, divided by its length (perf_analyzer's definition), beside the rate "
        "actually sent in open loop.",
    ]
    out += slo_section(report.get("slo"))
    server = server_table(report)
    if server:
        out += ["", "## Inside Triton (statistics API, differenced over each window)", "", server, "",
                "Per request: mean queue and compute times in ms; avg batch = inferences / executions (above 1: "
                "dynamic batching merged requests)."]
    notes = _notes(report["levels"])
    if notes:
        out += ["", "## Warnings", "", *notes]
    if plot_name:
        out += ["", f"![latency and throughput vs concurrency]({plot_name})"]
    return "\n".join(out) + "\n"


def _model_line(model: Mapping[str, Any]) -> list[str]:
    parts = [f"versions {', '.join(model['versions'])}"] if model.get("versions") else []
    parts += [f"{key.replace('_', ' ')} `{model[key]}`" for key in ("build_id", "precision", "runtime")
              if model.get(key)]
    return [f"- Model: {'; '.join(parts)}"] if parts else []


def write_markdown_report(result: LoadTestResult | Report, path: str | Path, plot_name: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown_report(result, plot_name), encoding="utf-8")
    return path


def csv_rows(result: LoadTestResult | Report) -> list[dict[str, Any]]:
    """One row per level in perf_analyzer's columns, then ours (loadtest/csv_report.py)."""
    return csv_report.csv_rows(_as_report(result))


def write_csv_report(result: LoadTestResult | Report, path: str | Path) -> Path:
    return csv_report.write_csv(_as_report(result), path)


def write_records_jsonl(result: LoadTestResult, path: str | Path) -> Path:
    """Every raw record of every level (warm-up and drain included, tagged by phase)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for level in result.levels:
            for record in level.records:
                f.write(json.dumps(record.to_dict()) + "\n")
    return path


def write_reports(
    result: LoadTestResult,
    out_dir: str | Path,
    *,
    stem: str | None = None,
    plot: bool = True,
    records: bool = False,
) -> dict[str, Path]:
    """Write <stem>.json, <stem>.md, <stem>.csv, <stem>.png and the self-contained <stem>.html (plots need
    `plot`), and <stem>.records.jsonl when asked; return their paths by kind."""
    out_dir = Path(out_dir)
    stem = stem or default_stem(result)
    report = report_dict(result)
    paths: dict[str, Path] = {"json": write_json_report(report, out_dir / f"{stem}.json")}
    plot_name = None
    if plot:
        from .html_report import write_html_report
        from .plot import write_plot  # matplotlib is slow to import; only when asked

        paths["png"] = write_plot(report, out_dir / f"{stem}.png")
        plot_name = paths["png"].name
        paths["html"] = write_html_report(report, out_dir / f"{stem}.html", measured_latencies_ms(result),
                                          latency_timeline(result))
    paths["md"] = write_markdown_report(report, out_dir / f"{stem}.md", plot_name)
    paths["csv"] = write_csv_report(report, out_dir / f"{stem}.csv")
    if records:
        paths["records"] = write_records_jsonl(result, out_dir / f"{stem}.records.jsonl")
    return paths


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


def _as_report(result: LoadTestResult | Report) -> Report:
    return report_dict(result) if isinstance(result, LoadTestResult) else result


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"
