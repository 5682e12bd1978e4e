"""Several models (builds, versions) under the same load in one run and one report: `--model a,b,c`.

Each model gets the same levels and its own full report; the comparison report puts their tables side by side
and plots their latency against throughput together. Levels are interleaved (the first level for every model,
then the second, ...), and which model goes first rotates from level to level: on a shared machine load drifts
by a quarter between minutes, and running one model's levels after the other's would hand that drift to one of
them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import LoadTestConfig
from .markdown_report import markdown_table
from .report import report_dict
from .report_files import write_reports
from .results import LoadTestResult
from .runner import run_loadtest


def run_comparison(config: LoadTestConfig, models: Sequence[str]) -> list[LoadTestResult]:
    models = list(models)
    runs: dict[str, list[LoadTestResult]] = {model: [] for model in models}
    for i, value in enumerate(config.rates or config.concurrency):
        shift = i % len(models)
        level = {"rates": (value,)} if config.rates else {"concurrency": (int(value),)}
        for model in models[shift:] + models[:shift]:
            runs[model].append(run_loadtest(dataclasses.replace(config, model=model, label=config.label or model,
                                                                **level)))
    return [LoadTestResult(dataclasses.replace(config, model=model, label=config.label or model),
                           [lv for run in runs[model] for lv in run.levels], runs[model][0].started_at,
                           runs[model][-1].finished_at, runs[model][0].model_metadata) for model in models]


def comparison_table(results: Sequence[LoadTestResult]) -> str:
    """One table: the model as first column, then each level's row of its own table."""
    lines: list[str] = []
    for result in results:
        table = markdown_table(result).splitlines()
        if not lines:
            lines = ["| model " + table[0], "|---" + table[1]]
        lines += [f"| {result.config.model} " + row for row in table[2:]]
    return "\n".join(lines)


def comparison_plot(results: Sequence[LoadTestResult]) -> str:
    """Base64 PNG: p50 and p99 against throughput, one colour per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .html_report import _png

    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for result in results:
        x = [lv.metrics.throughput_rps for lv in result.levels]
        for p, style in ((50, "-o"), (99, "--s")):
            y = [getattr(lv.metrics, f"latency_p{p}_ms") for lv in result.levels]
            ax.plot(x, [float("nan") if v is None else v for v in y], style, label=f"{result.config.model} p{p}")
    ax.set(xlabel="throughput (req/s)", ylabel="latency (ms)", title="Latency vs throughput")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def write_comparison(results: Sequence[LoadTestResult], out_dir: str | Path, stem: str = "comparison",
                     plot: bool = True) -> dict[str, Path]:
    """Every model's own reports, plus <stem>.{json,md,html} side by side; returns the comparison's paths."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for result in results:
        write_reports(result, out_dir, stem=f"{stem}_{result.config.model}", plot=plot)
    table = comparison_table(results)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps({"models": [r.config.model for r in results],
                                         "reports": [report_dict(r) for r in results]}, indent=2) + "\n")
    models = ", ".join(f"`{r.config.model}`" for r in results)
    from .slo import verdict_line

    slo = [f"- `{r.config.model}`: {verdict_line(r.slo, markdown=True)}" for r in results if r.slo]
    paths["md"].write_text(f"# Load-test comparison: {models}\n\nSame settings for each model; levels interleaved "
                           f"(each level for every model in turn, the first model rotating).\n\n{table}\n"
                           + ("\n## SLO\n\n" + "\n".join(slo) + "\n" if slo else ""), encoding="utf-8")
    if plot:
        from .html_report import _list, _table, inline

        body = (f"<h1>Load-test comparison</h1><p>{inline(models)}: same settings, levels interleaved.</p>"
                f"{_table(table)}" + (f"<h2>SLO</h2>{_list(slo)}" if slo else "") + "<figure><img alt='latency vs "
                "throughput' "
                f"src='data:image/png;base64,{comparison_plot(results)}'></figure>")
        paths["html"] = out_dir / f"{stem}.html"
        paths["html"].write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>comparison</title>"
                                 f"</head><body>{body}</body></html>\n", encoding="utf-8")
    return paths


def summary(results: Sequence[LoadTestResult]) -> dict[str, Any]:
    return {r.config.model: [lv.metrics.to_dict() for lv in r.levels] for r in results}
