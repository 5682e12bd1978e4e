"""A self-contained HTML load-test report: the results table, the `--slo` verdict, Triton's breakdown, warnings,
and four plots embedded as PNG data (latency percentiles against throughput, each level's latency distribution,
latency over time, the server-side time per model). One file to attach to a ticket or open offline; `code` in the
Markdown it shares text with is rendered as <code>."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engineforge.stats import median

from .markdown_report import markdown_report, markdown_table, server_table
from .report_notes import notes, slo_section

PERCENTILES = (50, 90, 99, 999)


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _level_name(level: Mapping[str, Any]) -> str:
    return f"{level['rate']:g} req/s" if level.get("rate") else f"c{level['concurrency']}"


def latency_vs_throughput(levels: Sequence[Mapping[str, Any]]) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = [level["metrics"]["throughput_rps"] for level in levels]
    for p in PERCENTILES:
        y = [level["metrics"].get(f"latency_p{p}_ms") for level in levels]
        ax.plot(x, [float("nan") if v is None else v for v in y], marker="o", label="p99.9" if p == 999 else f"p{p}")
    for level, xi in zip(levels, x, strict=True):
        ax.annotate(_level_name(level), (xi, level["metrics"].get("latency_p50_ms") or 0), fontsize=8)
    ax.set(xlabel="throughput (req/s)", ylabel="latency (ms)", title="Latency percentiles vs throughput")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def latency_distribution(latencies_ms: Mapping[str, Sequence[float]]) -> str:
    """Cumulative distribution of each level's successful latencies (log x: the tail stays visible)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, values in latencies_ms.items():
        if len(values):
            ordered = np.sort(np.asarray(values))
            ax.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), label=name)
    ax.set_xscale("log")
    ax.set(xlabel="latency (ms, log)", ylabel="fraction of requests", title="Latency distribution")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def latency_over_time(timeline: Mapping[str, Mapping[str, Sequence[float]]]) -> str | None:
    """Each level's latencies against send time: the median and the maximum per time bin (a stall is a spike in
    the maximum even in a closed loop, where it is one sample among thousands), failures as crosses."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not any(series["t_s"] or series["failed_t_s"] for series in timeline.values()):
        return None
    fig = Figure(figsize=(8, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, series in timeline.items():
        t, ms = np.asarray(series["t_s"], dtype=float), np.asarray(series["ms"], dtype=float)
        if len(t):
            edges = np.linspace(0.0, float(t.max()) + 1e-9, min(200, max(len(t) // 5, 2)) + 1)
            which = np.clip(np.digitize(t, edges) - 1, 0, len(edges) - 2)
            used = np.unique(which)
            mids = (edges[used] + edges[used + 1]) / 2
            line = ax.plot(mids, [ms[which == b].max() for b in used], label=f"{name} max")[0]
            ax.plot(mids, [median(ms[which == b]) for b in used], linestyle="--", color=line.get_color(),
                    alpha=0.7, label=f"{name} median")
        if series["failed_t_s"]:
            ax.plot(series["failed_t_s"], series["failed_ms"], "x", color="red", markersize=4, label=f"{name} failed")
    ax.set_yscale("log")
    ax.set(xlabel="send time in the window (s)", ylabel="latency (ms, log)", title="Latency over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def server_time(levels: Sequence[Mapping[str, Any]]) -> str | None:
    """Stacked mean time per request inside Triton, per level and model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bars = [(f"{_level_name(level)} {row['model']}", row) for level in levels for row in level.get("server") or ()]
    if not bars:
        return None
    fig = Figure(figsize=(8, max(3.0, 0.8 + 0.35 * len(bars))), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    left = [0.0] * len(bars)
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        widths = [row[f"{stage}_ms"] or 0.0 for _, row in bars]
        ax.barh([name for name, _ in bars], widths, left=left, label=stage.replace("_", " "))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set(xlabel="ms per request", title="Inside Triton")
    ax.legend(fontsize=8)
    return _png(fig)


def inline(text: str) -> str:
    """Markdown inline text as HTML: escaped, with `code` spans as <code> (no literal backticks)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _table(markdown: str) -> str:
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("|")]
    if len(rows) < 2:
        return ""
    head, body = rows[0], rows[2:]
    cells = "".join(f"<th>{inline(c.strip())}</th>" for c in head)
    lines = "".join("<tr>" + "".join(f"<td>{inline(c.strip())}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{lines}</tbody></table>"


def _list(lines: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{inline(line[2:])}</li>" for line in lines if line.startswith("- ")) + "</ul>"


def html_report(report: Mapping[str, Any], latencies_ms: Mapping[str, Sequence[float]] | None = None,
                timeline: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> str:
    levels = report["levels"]
    title = html.escape(f"Load test: {report['server']['model']}" + (f" ({report['label']})" if report.get("label")
                                                                       else ""))
    images = [("latency percentiles vs throughput", latency_vs_throughput(levels))]
    if latencies_ms:
        images.append(("latency distribution", latency_distribution(latencies_ms)))
    over_time = latency_over_time(timeline) if timeline else None
    if over_time:
        images.append(("latency over time", over_time))
    inside = server_time(levels)
    if inside:
        images.append(("time inside Triton", inside))
    markdown = markdown_report(report).split("\n## ")[0]  # the settings list above the first section
    intro = [line for line in markdown.splitlines() if line.startswith("- ")]
    parts = [f"<h1>{title}</h1>", _list(intro), "<h2>Results</h2>", _table(markdown_table(report))]
    if report.get("slo"):
        parts += ["<h2>SLO</h2>", _list(slo_section(report["slo"]))]
    if server_table(report):
        parts += ["<h2>Inside Triton</h2>", _table(server_table(report))]
    warnings = notes(levels)
    if warnings:
        parts += ["<h2>Warnings</h2>", _list(warnings)]
    parts += [f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'
              for alt, data in images]
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}"
             "code{background:#f3f3f3;padding:0 3px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head>" \
           f"<body>{''.join(parts)}</body></html>\n"


def write_html_report(report: Mapping[str, Any], path: str | Path,
                      latencies_ms: Mapping[str, Sequence[float]] | None = None,
                      timeline: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_report(report, latencies_ms, timeline), encoding="utf-8")
    return path
