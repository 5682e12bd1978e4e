"""The plots and the self-contained HTML page of a generate-mode load test (the tables of the Markdown report, then
the distributions (cumulative) of TTFT, ITL and end-to-end latency per level, and a histogram of the gaps between
streamed pieces), and `write_generate_reports`, which writes every report file at once, as loadtest/report_files.py
does for the other modes. Plots are drawn from the raw records, so they show exactly the samples the tables
summarize (loadtest/generate_metrics.py); matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

import csv
import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .generate_metrics import distribution_ms
from .generate_records import GenerationRecord
from .generate_report import (
    CSV_FIELDS,
    LATENCY_SECTIONS,
    TOKEN_SECTIONS,
    csv_rows,
    generate_markdown,
    generate_report_dict,
    outcome_table,
    settings_lines,
    stats_table,
    throughput_table,
)
from .html_report import _list, _png, _table
from .records import MEASURE
from .report import default_stem, write_json_report, write_records_jsonl
from .report_notes import notes
from .results import LoadTestResult
from .slo import level_name

PANELS = (("ttft", "time to first token"), ("itl", "inter-token latency (per request)"), ("e2e", "end-to-end"))


def _figure(width: float, height: float, cols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, cols, squeeze=False)[0]


def _name(level: Any) -> str:
    return level_name({"rate": level.rate, "concurrency": level.concurrency})


def distributions_figure(result: LoadTestResult) -> Any:
    """One panel per metric (TTFT, ITL, e2e): the fraction of successful requests at or below each value."""
    import numpy as np

    fig, axes = _figure(12, 3.8, len(PANELS))
    for ax, (what, title) in zip(axes, PANELS, strict=True):
        drawn = False
        for level in result.levels:
            values = np.sort(distribution_ms(level.records, what, from_schedule=level.rate is not None))
            if len(values):
                ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=_name(level))
                drawn = True
        ax.set(xlabel="ms", ylabel="fraction of requests", title=title)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=7)
        else:  # say so instead of an empty-looking axis
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
    return fig


def piece_gap_figure(result: LoadTestResult) -> Any | None:
    """Histogram of every gap between consecutive streamed pieces (None when no request streamed two pieces)."""
    gaps = {_name(level): [1000.0 * (b - a) for r in level.records if r.phase == MEASURE and r.ok
                           and isinstance(r, GenerationRecord) for a, b in zip(r.piece_s, r.piece_s[1:], strict=False)]
            for level in result.levels}
    if not any(gaps.values()):
        return None
    fig, (ax,) = _figure(7, 3.8)
    for name, values in gaps.items():
        if values:
            ax.hist(values, bins=50, alpha=0.5, label=name)
    ax.set(xlabel="gap between pieces (ms)", ylabel="pieces", title="Gaps between streamed pieces")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def write_generate_plot(result: LoadTestResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    distributions_figure(result).savefig(path, format="png", dpi=100)
    return path


def generate_html(report: Mapping[str, Any], result: LoadTestResult) -> str:
    levels = report["levels"]
    title = html.escape(f"Generate load test: {report['settings']['model']}"
                        + (f" ({report['label']})" if report.get("label") else ""))
    parts = [f"<h1>{title}</h1>", _list(settings_lines(report)), "<h2>Throughput</h2>",
             _table(throughput_table(levels))]
    for key, heading in (*LATENCY_SECTIONS, *TOKEN_SECTIONS):
        parts += [f"<h2>{html.escape(heading)}</h2>", _table(stats_table(levels, key))]
    parts += ["<h2>Outcomes</h2>", _table(outcome_table(levels))]
    images = [("TTFT, ITL and end-to-end latency distributions", _png(distributions_figure(result)))]
    gaps = piece_gap_figure(result)
    if gaps is not None:
        images.append(("gaps between streamed pieces", _png(gaps)))
    parts += [f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'
              for alt, data in images]
    parts += ["<h2>Definitions</h2>", _list([f"- {k}: {v}" for k, v in report["definitions"].items()])]
    warnings = notes(levels)
    if warnings:
        parts += ["<h2>Warnings</h2>", _list(warnings)]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}"
             "code{background:#f3f3f3;padding:0 3px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")


def write_generate_html(report: Mapping[str, Any], result: LoadTestResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generate_html(report, result), encoding="utf-8")
    return path


def write_generate_reports(result: LoadTestResult, out_dir: str | Path, *, stem: str | None = None,
                           plot: bool = True, records: bool = False) -> dict[str, Path]:
    """<stem>.json, .md, .csv and, with `plot`, .png and the self-contained .html (and .records.jsonl when asked)."""
    out_dir = Path(out_dir)
    stem = stem or default_stem(result)
    report = generate_report_dict(result)
    paths = {"json": write_json_report(report, out_dir / f"{stem}.json")}
    plot_name = None
    if plot:
        paths["png"] = write_generate_plot(result, out_dir / f"{stem}.png")
        plot_name = paths["png"].name
        paths["html"] = write_generate_html(report, result, out_dir / f"{stem}.html")
    paths["md"] = out_dir / f"{stem}.md"
    paths["md"].write_text(generate_markdown(report, plot_name), encoding="utf-8")
    paths["csv"] = out_dir / f"{stem}.csv"
    with paths["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(result))
    if records:
        paths["records"] = write_records_jsonl(result, out_dir / f"{stem}.records.jsonl")
    return paths
