"""Reports of a generate-mode load test: JSON and CSV for machines, Markdown (and, in loadtest/generate_html.py, HTML
with plots) for people, in the same directory and under the same stem as every load-test report.

The JSON is the load-test report (loadtest/report.py, same schema: settings, levels with their request-level
metrics, server, environment) plus, per level, `generation` (loadtest/generate_metrics.py) and, at the top, the
`definitions` of every generation metric. The CSV has one row per request (every phase, tagged). A value that
did not happen (no successful request, no request with two tokens) is null in JSON, empty in CSV, "—" in tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .generate_metrics import DEFINITIONS, STAT_PERCENTILES, generation_metrics, percentile_key, request_value_s
from .generate_records import GenerationRecord
from .report import report_dict
from .report_notes import notes
from .results import LoadTestResult
from .slo import level_name

STAT_COLUMNS = ("count", "mean", *(percentile_key(p) for p in STAT_PERCENTILES), "min", "max")
LATENCY_SECTIONS = (("ttft_ms", "Time to first token (ms)"), ("itl_ms", "Inter-token latency per request (ms)"),
                    ("piece_gap_ms", "Gap between streamed pieces (ms)"), ("e2e_ms", "End-to-end request latency (ms)"))
TOKEN_SECTIONS = (("prompt_tokens", "Prompt tokens (server-reported)"), ("output_tokens", "Output tokens"))


def generate_report_dict(result: LoadTestResult) -> dict[str, Any]:
    """The JSON-shaped report: the load-test report plus each level's generation metrics and the definitions."""
    report = report_dict(result)
    for level, data in zip(result.levels, report["levels"], strict=True):
        data["generation"] = generation_metrics(level.records, max(level.window_s, 1e-9),
                                                from_schedule=level.rate is not None).to_dict()
    report["definitions"] = DEFINITIONS
    return report


def _num(value: float | None) -> str:
    """A count as is, any other value to 2 decimals, "—" for one that did not happen."""
    if value is None:
        return "—"
    return str(value) if isinstance(value, int) else f"{value:.2f}"


def stats_table(levels: Sequence[Mapping[str, Any]], key: str) -> str:
    head = ["level", *(c.replace("_", ".") for c in STAT_COLUMNS)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level in levels:
        stats = level["generation"][key]
        cells = [_num(stats[c]) if stats else "—" for c in STAT_COLUMNS]
        rows.append(f"| {level_name(level)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def throughput_table(levels: Sequence[Mapping[str, Any]]) -> str:
    rows = ["| level | requests | ok | errors | answered in window | req/s | output tok/s | output tokens |",
            "|---|---|---|---|---|---|---|---|"]
    for level in levels:
        g = level["generation"]
        rows.append(f"| {level_name(level)} | {g['requests']} | {g['completed']} | {g['errors']} | {g['answered']} | "
                    f"{g['requests_per_s']:.2f} | {g['output_tokens_per_s']:.1f} | {g['output_tokens_total']} |")
    return "\n".join(rows)


def outcome_table(levels: Sequence[Mapping[str, Any]]) -> str:
    """Finish reasons and error kinds per level (only the ones that occurred)."""
    reasons = sorted({r for level in levels for r in level["generation"]["finish_reasons"]})
    kinds = sorted({k for level in levels for k in level["generation"]["errors_by_kind"]})
    head = ["level", *(f"finish: {r}" for r in reasons), *(f"error: {k}" for k in kinds),
            "no token", "one token", "count mismatch"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level in levels:
        g = level["generation"]
        cells = [*(str(g["finish_reasons"].get(r, 0)) for r in reasons), *(str(g["errors_by_kind"].get(k, 0))
                                                                           for k in kinds),
                 str(g["no_token_requests"]), str(g["one_token_requests"]), str(g["token_count_mismatch"])]
        rows.append(f"| {level_name(level)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def settings_lines(report: Mapping[str, Any]) -> list[str]:
    s = report["settings"]
    prompts = (f"{s['n_prompts']} prompts from `{s['prompts_source']}`" if s["n_prompts"] else
               f"synthetic prompts of `{s['prompt_len']}` words")
    loop = (f"open loop at {', '.join(f'{r:g}' for r in s['rates'])} req/s ({s['arrival']} arrivals)" if s["rates"]
            else f"closed loop at concurrency {', '.join(map(str, s['concurrency']))} (one stream per request)")
    return [f"- Server: `{report['server']['url']}` (gRPC streaming"
            + (f"; Triton {report['server']['triton_version']})" if report["server"].get("triton_version") else ")"),
            f"- Model: `{s['model']}` (decoupled)", f"- Requests: {prompts}; MAX_TOKENS `{s['max_tokens']}`"
            + ("" if s["max_tokens"] is not None else " (not sent: the model decides)"),
            f"- Load: {loop}; per level warm-up {s['warmup_s']:g} s (discarded), measured {s['duration_s']:g} s; "
            f"request timeout {s['timeout_s']:g} s; {s.get('workers', 1)} generator process(es)",
            f"- Run: {report['started_at']} → {report['finished_at']}"]


def generate_markdown(report: Mapping[str, Any], plot_name: str | None = None) -> str:
    levels = report["levels"]
    title = f"# Generate load test: `{report['settings']['model']}`" + (f" ({report['label']})" if report.get("label")
                                                                          else "")
    out = [title, "", *settings_lines(report), "", "## Throughput", "", throughput_table(levels)]
    for key, heading in (*LATENCY_SECTIONS, *TOKEN_SECTIONS):
        out += ["", f"## {heading}", "", stats_table(levels, key)]
    out += ["", "## Outcomes", "", outcome_table(levels), "", "## Definitions", "",
            *(f"- {name}: {text}" for name, text in report["definitions"].items())]
    warnings = notes(levels)
    if warnings:
        out += ["", "## Warnings", "", *warnings]
    if plot_name:
        out += ["", f"![TTFT, ITL and end-to-end latency distributions]({plot_name})"]
    return "\n".join(out) + "\n"


CSV_FIELDS = ("level", "phase", "seq", "plan_index", "ok", "send_offset_s", "ttft_ms", "itl_ms", "e2e_ms", "pieces",
              "prompt_tokens", "output_tokens", "streamed_tokens", "max_tokens", "finish_reason", "error_kind", "error")


def csv_rows(result: LoadTestResult) -> list[dict[str, Any]]:
    """One row per request of every level (times in ms; empty where undefined); send offsets from the run's first
    send."""
    starts = [r.start_s for level in result.levels for r in level.records]
    origin = min(starts) if starts else 0.0
    rows = []
    for level in result.levels:
        name = level_name({"rate": level.rate, "concurrency": level.concurrency})
        for r in sorted(level.records, key=lambda r: r.start_s):
            gen = isinstance(r, GenerationRecord)
            row: dict[str, Any] = {"level": name, "phase": r.phase, "seq": r.seq, "ok": r.ok,
                                   "send_offset_s": round(r.start_s - origin, 6), "error_kind": r.error_kind,
                                   "error": r.error}
            for what in ("ttft", "itl", "e2e"):
                value = request_value_s(r, what, level.rate is not None) if gen and r.ok else None
                row[f"{what}_ms"] = None if value is None else round(1000.0 * value, 3)
            if gen:
                row |= {"plan_index": r.plan_index, "pieces": len(r.piece_s), "prompt_tokens": r.prompt_tokens,
                        "output_tokens": r.output_tokens,
                        "streamed_tokens": r.streamed_tokens, "max_tokens": r.max_tokens,
                        "finish_reason": r.finish_reason}
            rows.append(row)
    return rows
