"""Reports: a machine-readable JSON file, a Markdown summary, a PNG plot and optionally raw records.

Everything is rendered from the JSON-shaped dict (`report_dict`), so a report written earlier can
be reloaded with `load_json_report` and re-rendered or compared with another variant's.
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from engineforge.errors import DataError

from .records import MEASURE
from .runner import LoadTestResult

SCHEMA = "engineforge.loadtest/v1"
# Above this client CPU use (% of one core) the load generator itself may limit throughput.
CLIENT_CPU_WARN_PERCENT = 85.0

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
    """One row per level (concurrency, or target rate in open loop); latencies in ms over successful requests
    (open loop: from each request's scheduled send time)."""
    report = _as_report(result)
    batched = report["settings"].get("batch_size", 1) > 1
    open_loop = any(level.get("rate") for level in report["levels"])
    header = ["rate (req/s)", "sent on time"] if open_loop else ["concurrency"]
    header += ["requests", "errors", "throughput (req/s)"]
    header += ["items/s"] if batched else []
    header += ["p50 ms", "p90 ms", "p95 ms", "p99 ms", "p99.9 ms", "client CPU %"]
    checked = any(level["metrics"].get("checked_items") for level in report["levels"])
    header += ["correct %"] if checked else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for level in report["levels"]:
        m = level["metrics"]
        if open_loop:
            schedule = level.get("schedule") or {}
            kept = "yes" if schedule.get("kept_rate") else f"no ({schedule.get('sent_rps', 0):.1f} req/s)"
            cells = [f"{level['rate']:g}", kept]
        else:
            cells = [str(level["concurrency"])]
        cells += [str(m["requests"]), str(m["errors"]), f"{m['throughput_rps']:.1f}"]
        cells += [f"{m['throughput_items_per_s']:.1f}"] if batched else []
        cells += [_ms(m.get(f"latency_p{p}_ms")) for p in (50, 90, 95, 99, 999)]
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
        "Latency is the client-observed gRPC round trip of successful requests (HDR-histogram percentiles; in "
        "open loop from each request's scheduled send); throughput counts successful requests inside the "
        "measurement window.",
    ]
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


# perf_analyzer's CSV columns (latencies in µs), then ours.
CSV_COLUMNS = ("Concurrency", "Request Rate", "Inferences/Second", "Client Send", "Network+Server Send/Recv",
               "Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output",
               "Client Recv", "p50 latency", "p90 latency", "p95 latency", "p99 latency", "Avg latency",
               "p99.9 latency", "Errors", "Requests/Second", "Client CPU %", "Generator Processes", "Correct %")


def csv_rows(result: LoadTestResult | Report) -> list[dict[str, Any]]:
    """One row per level in perf_analyzer's columns where they exist (µs); server times are Triton's, summed
    over an ensemble's models as perf_analyzer does (the ensemble's own row when it runs nothing else)."""
    def us(value: float | None) -> str:
        return "" if value is None else str(round(value * 1000))

    def stage(parts: list[dict[str, Any]], name: str) -> str:
        values = [p[f"{name}_ms"] for p in parts if p[f"{name}_ms"] is not None]
        return us(sum(values)) if values else ""

    rows = []
    for level in _as_report(result)["levels"]:
        m = level["metrics"]
        server = level.get("server") or []
        parts = server[1:] or server[:1]
        rows.append({"Concurrency": "" if level.get("rate") else level["concurrency"],
                     "Request Rate": level.get("rate") or "",
                     "Inferences/Second": round(m["throughput_items_per_s"], 3),
                     "Client Send": "", "Network+Server Send/Recv": "", "Server Queue": stage(parts, "queue"),
                     "Server Compute Input": stage(parts, "compute_input"),
                     "Server Compute Infer": stage(parts, "compute_infer"),
                     "Server Compute Output": stage(parts, "compute_output"), "Client Recv": "",
                     **{f"p{p} latency": us(m.get(f"latency_p{p}_ms")) for p in (50, 90, 95, 99)},
                     "Avg latency": us(m.get("latency_mean_ms")), "p99.9 latency": us(m.get("latency_p999_ms")),
                     "Errors": m["errors"], "Requests/Second": round(m["throughput_rps"], 3),
                     "Client CPU %": "" if level.get("client_cpu_percent") is None
                     else round(level["client_cpu_percent"], 1),
                     "Generator Processes": level.get("workers", 1),
                     "Correct %": "" if m.get("accuracy") is None else round(100 * m["accuracy"], 3)})
    return rows


def write_csv_report(result: LoadTestResult | Report, path: str | Path) -> Path:
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(result))
    return path


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
        paths["html"] = write_html_report(report, out_dir / f"{stem}.html", measured_latencies_ms(result))
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


def _notes(levels: Sequence[Mapping[str, Any]]) -> list[str]:
    notes = []
    for level in levels:
        c, m = level["concurrency"], level["metrics"]
        from .stability import stability_note

        if stability_note(level):
            notes.append(f"- {level.get('rate') or level['concurrency']}: {stability_note(level)}")
        if level.get("rate"):
            c = f"{level['rate']:g} req/s"
            if not (level.get("schedule") or {}).get("kept_rate", True):
                notes.append(f"- rate {c}: {level['schedule']['shortfall']}")
        if level.get("aborted"):
            notes.append(f"- concurrency {c}: {level['aborted']}")
        if m["errors"]:
            kinds = ", ".join(f"{n} {kind}" for kind, n in m["errors_by_kind"].items())
            if m.get("errors_by_status"):
                kinds += "; gRPC status " + ", ".join(f"{code} ×{n}" for code, n in m["errors_by_status"].items())
            examples = "; ".join(f"`{e}`" for e in m["error_examples"])
            notes.append(f"- concurrency {c}: {m['errors']} failed requests ({kinds}), e.g. {examples}")
        if m["requests"] == 0 and not level.get("aborted"):
            notes.append(f"- concurrency {c}: no request completed inside the measurement window")
        cpu, processes = level.get("client_cpu_percent"), level.get("workers") or 1
        if cpu is not None and cpu / processes >= CLIENT_CPU_WARN_PERCENT:
            notes.append(
                f"- concurrency {c}: each of the {processes} load-generator process(es) used {cpu / processes:.0f}% "
                f"of a CPU core; the generator may be the bottleneck (--workers {processes + 1} if cores are free, "
                "or run it on another machine)"
            )
        if level.get("cancelled_requests"):
            notes.append(
                f"- concurrency {c}: {level['cancelled_requests']} requests were still in flight after the "
                "drain timeout and were cancelled"
            )
    return notes
