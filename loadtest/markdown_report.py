"""The Markdown report of a load test: the results table (also printed by the CLI and the demos), Triton's
per-model breakdown and the whole summary page, rendered from the report data (loadtest/report.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .report import Report, as_report
from .report_notes import notes as _notes
from .report_notes import slo_section
from .results import LoadTestResult


def markdown_table(result: LoadTestResult | Report) -> str:
    """One row per level (concurrency, or target rate in open loop: with the rate actually sent, whether it went
    out on time and the limit hit); latencies in ms over successful requests (open loop: from each request's
    scheduled send time); throughput: successful responses completed inside the window per second."""
    report = as_report(result)
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
    report = as_report(result)
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
    report = as_report(result)
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


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"
