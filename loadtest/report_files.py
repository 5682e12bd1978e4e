"""Every report file of a load test at once: JSON, Markdown, CSV, the PNG plot, the HTML page and, when asked,
the raw records (the formats are loadtest/report.py, markdown_report.py, html_report.py and plot.py)."""

from __future__ import annotations

from pathlib import Path

from .markdown_report import write_markdown_report
from .report import (
    default_stem,
    latency_timeline,
    measured_latencies_ms,
    report_dict,
    write_csv_report,
    write_json_report,
    write_records_jsonl,
)
from .results import LoadTestResult


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
