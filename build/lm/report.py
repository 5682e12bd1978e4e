"""The LM build report: the fp32 reference, one row per candidate (built or why not, its figures, its verdict)
and the chosen engine. JSON for machines, Markdown for people, beside the bundle."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engineforge.errors import AccuracyBudgetExceeded, EngineforgeError, StepFailedError

from ..report import package_versions, write_report_files
from .quality import LMBudget

# A candidate's status: chosen; within budget but slower; over budget; refused before building; failed to build.
CHOSEN, WITHIN, OVER, REFUSED, FAILED = "chosen", "within budget", "over budget", "refused", "failed"
LM_PACKAGES = ("engineforge", "torch", "transformers", "bitsandbytes", "onnxruntime", "onnxruntime-genai",
               "tokenizers")


@dataclass
class LMBuildReport:
    preset: str
    checkpoint: dict[str, Any]
    eval_data: dict[str, Any]
    budget: dict[str, float]
    settings: dict[str, Any]
    status: str = "running"  # running, ok, failed
    error: str | None = None
    reference: dict[str, Any] = field(default_factory=dict)  # fp32 perplexity, prompts, speed
    candidates: list[dict[str, Any]] = field(default_factory=list)
    chosen: str | None = None
    bundle_dir: str | None = None
    published: dict[str, Any] | None = None
    total_seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=lambda: package_versions(LM_PACKAGES))

    @property
    def chosen_row(self) -> dict[str, Any] | None:
        return next((c for c in self.candidates if c["status"] == CHOSEN), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        return write_report_files(out_dir, self.to_dict(), self.to_markdown())

    def to_markdown(self) -> str:
        ckpt, ref = self.checkpoint, self.reference
        lines = [f"# LM build report: {self.status.upper()}", "",
                 f"- checkpoint: `{ckpt.get('path')}` ({ckpt.get('architecture')}, family {ckpt.get('family')})",
                 f"- preset: {self.preset}; chosen: {self.chosen or 'none'}",
                 f"- eval data: `{self.eval_data.get('path')}` ({self.eval_data.get('texts')} texts for perplexity, "
                 f"{self.eval_data.get('prompts')} prompts for greedy agreement over "
                 f"{self.settings.get('new_tokens')} new tokens)",
                 f"- budget: {LMBudget(**self.budget).describe()}",
                 f"- total time: {self.total_seconds:.1f} s"]
        if self.error:
            lines.append(f"- **error**: {self.error}")
        if ref:
            lines += ["", "## fp32 reference (torch)", "",
                      f"perplexity {_fmt(ref.get('perplexity'))}, {_fmt(ref.get('tokens_per_s'))} tokens/s, "
                      f"TTFT {_fmt(ref.get('ttft_ms'))} ms, {_fmt(ref.get('size_mb'))} MB"]
        lines += ["", "## Candidates (preset order)", "",
                  "| candidate | perplexity | Δ% | agreement | tokens/s | TTFT ms | MB | status |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in self.candidates:
            agreement = c.get("agreement")
            status = c["status"] + (f": {c['reason'][:300]}" if c.get("reason") else "")
            lines.append(f"| {c['candidate']} | {_fmt(c.get('perplexity'))} | "
                         f"{_fmt(c.get('perplexity_increase_pct'))} | "
                         f"{'–' if agreement is None else f'{agreement:.0%}'} | {_fmt(c.get('tokens_per_s'))} | "
                         f"{_fmt(c.get('ttft_ms'))} | {_fmt(c.get('size_mb'))} | {status.replace('|', '/')} |")
        if self.bundle_dir:
            lines += ["", f"Bundle: `{self.bundle_dir}` (open it with `engineforge.lm.bundle.open_lm_bundle`)."]
        if self.published:
            lines += ["", f"Published: {', '.join(f'{k} {v}' for k, v in self.published.items())}."]
        lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in self.versions.items()), ""]
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def no_candidate_error(report: LMBuildReport, budget: LMBudget) -> EngineforgeError:
    """No candidate within budget: name each one's figures (or why it was not built) and what to change."""
    def describe(row: dict[str, Any]) -> str:
        if row["status"] in (REFUSED, FAILED):
            return f"{row['candidate']}: {row['status']} ({row.get('reason')})"
        return (f"{row['candidate']}: perplexity {row.get('perplexity')} ({_signed(row.get('perplexity_increase_pct'))}"
                f" vs fp32 {report.reference.get('perplexity')}), agreement {_pct(row.get('agreement'))}, "
                f"{row.get('tokens_per_s')} tokens/s - {row.get('reason')}")
    summary = "; ".join(describe(row) for row in report.candidates)
    measured = [row for row in report.candidates if row["status"] == OVER]
    if not measured:
        return StepFailedError(f"no candidate of preset {report.preset} could be built here: {summary}. Choose a "
                              "preset whose runtime is installed (e.g. --preset lm-fp32 builds with torch)")
    figures = [{"candidate": r["candidate"], **r.get("comparison", {}), "tokens_per_s": r.get("tokens_per_s")}
               for r in measured]
    return AccuracyBudgetExceeded(
        f"no candidate of preset {report.preset} is within the LM budget ({budget.describe()}): "
        f"{summary}. Loosen the budget (--max-ppl-increase, "
        "--min-agreement) or choose a milder preset (lm-int8, lm-fp32)", figures=figures)


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}%"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"
