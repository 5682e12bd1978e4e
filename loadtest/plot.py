"""PNG plot of latency percentiles and throughput against concurrency (open loop: against the target rate).

Uses matplotlib's object API with the Agg canvas directly (no pyplot), so it neither needs a
display nor changes the global backend of a process that imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PERCENTILES = (50, 90, 95, 99, 999)


def write_plot(report: Mapping[str, Any], path: str | Path) -> Path:
    """Plot a report dict (see `report.report_dict`); levels with no successes leave gaps."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    levels = report["levels"]
    open_loop = any(level.get("rate") for level in levels)
    x = [level["rate"] if open_loop else level["concurrency"] for level in levels]
    xlabel = "target rate (req/s)" if open_loop else "concurrency"

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_lat, ax_tput = fig.subplots(1, 2)
    for p in PERCENTILES:
        y = [_nan(level["metrics"].get(f"latency_p{p}_ms")) for level in levels]
        ax_lat.plot(x, y, marker="o", label="p99.9" if p == 999 else f"p{p}")
    ax_lat.set(xlabel=xlabel, ylabel="latency (ms)", title="Latency percentiles")
    ax_lat.set_ylim(bottom=0)
    ax_lat.legend()

    ax_tput.plot(x, [level["metrics"]["throughput_rps"] for level in levels], marker="o", label="requests/s")
    if report["settings"].get("batch_size", 1) > 1:
        items = [level["metrics"]["throughput_items_per_s"] for level in levels]
        ax_tput.plot(x, items, marker="s", label="items/s")
    ax_tput.set(xlabel=xlabel, ylabel="throughput (1/s)", title="Throughput")
    ax_tput.set_ylim(bottom=0)
    ax_tput.legend()

    for ax in (ax_lat, ax_tput):
        if len(x) > 1 and min(x) > 0 and max(x) / min(x) >= 8:  # e.g. 1,2,4,...,64: spread the low end
            ax.set_xscale("log", base=2)
        ax.set_xticks(x, [f"{c:g}" for c in x])
        ax.grid(alpha=0.3)
    label = report.get("label")
    fig.suptitle(f"{report['server']['model']}" + (f" ({label})" if label else "") + f" — {report['settings']['mode']}")
    fig.savefig(path, dpi=100)
    return path


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value
