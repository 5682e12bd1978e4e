"""The build report: what every step did, the accuracy verdict and the sizes; JSON for machines, Markdown
for people. Also records package versions for reproducibility."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("engineforge", "torch", "transformers", "onnx", "onnxruntime", "numpy", "tokenizers")


def write_report_files(out_dir: Path, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """build_report.json (for machines) and build_report.md (for people) in `out_dir`: every build's report."""
    json_path, md_path = Path(out_dir) / "build_report.json", Path(out_dir) / "build_report.md"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def package_versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    """The installed version of each package that built an engine, and Python's."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


@dataclass
class StepRecord:
    name: str
    seconds: float
    details: dict[str, Any]


@dataclass
class BuildReport:
    """One build (or the chosen candidate of a budget search). `status` is running, ok or failed."""

    build_id: str
    preset: str | None
    settings: dict[str, Any]
    recipe: list[dict[str, Any]]
    versions: dict[str, str]
    status: str = "running"
    error: str | None = None
    checkpoint: dict[str, Any] | None = None
    steps: list[StepRecord] = field(default_factory=list)
    precision: str | None = None
    runtime: str | None = None
    validation: dict[str, Any] | None = None  # accuracy.Comparison fields plus the budget
    published: dict[str, Any] | None = None  # repo_dir, model_name, version
    sizes_mb: dict[str, float | None] = field(default_factory=dict)
    bundle_dir: str | None = None
    total_seconds: float = 0.0
    candidates: list[dict[str, Any]] = field(default_factory=list)  # a preset's budget search, in order
    traffic_profile: dict[str, Any] | None = None  # traffic_summary() of the profile runtimes were timed on

    def step(self, name: str) -> StepRecord | None:
        return next((s for s in self.steps if s.name == name), None)

    @property
    def chosen_candidate(self) -> str | None:
        return next((c["candidate"] for c in self.candidates if c["result"] == "chosen"), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = [{"name": r.name, "seconds": round(r.seconds, 3), "details": r.details} for r in self.steps]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildReport:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["steps"] = [StepRecord(**s) for s in data.get("steps", [])]
        return cls(**values)

    @classmethod
    def load(cls, out_dir: Path) -> BuildReport:
        return cls.from_dict(json.loads((Path(out_dir) / "build_report.json").read_text()))

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        return write_report_files(out_dir, self.to_dict(), self.to_markdown())

    def to_markdown(self) -> str:
        ckpt = self.checkpoint or {}
        lines = [
            f"# Build report: {self.status.upper()}",
            "",
            f"- checkpoint: `{ckpt.get('path')}` ({ckpt.get('architecture')}, "
            f"weights sha256 {str(ckpt.get('weights_sha256'))[:12]}…)",
            f"- preset: {self.preset or 'custom recipe'}; precision: {self.precision}",
            f"- total time: {self.total_seconds:.1f} s",
        ]
        if self.error:
            lines.append(f"- **error**: {self.error}")
        lines += ["", "## Steps", "", "| # | step | seconds | what it did |", "|---|---|---|---|"]
        for i, step in enumerate(self.steps, start=1):
            details = "; ".join(f"{k}={_fmt(v)}" for k, v in step.details.items())
            lines.append(f"| {i} | {step.name} | {step.seconds:.2f} | {details} |")
        val = self.validation
        if val:
            budget = val["budget"]
            lines += ["", "## Accuracy (eval set)", ""]
            if isinstance(val.get("engine_executed"), str):  # e.g. a TensorRT engine on a machine without a GPU
                lines += [f"**{val['engine_executed']}**: these figures are not the engine's own.", ""]
            lines += (_embedding_rows(val, budget) if "cosine_mean" in val else _token_rows(val, budget)
                      if "f1_vs_reference" in val else _classifier_rows(val, budget))
        if self.traffic_profile:
            lines += ["", "## Traffic profile", "", *_traffic_rows(self.traffic_profile)]
        if self.candidates:
            limit = self.settings.get("max_build_minutes")
            lines += ["", "## Candidates tried (most aggressive first)", ""]
            lines += [f"Time limit: {limit:g} min (--max-build-minutes).", ""] if limit else []
            lines += ["| candidate | estimated | took | result |", "|---|---|---|---|"]
            lines += [f"| {c['candidate']} | {_seconds(c.get('estimated_s'))} | {_seconds(c.get('seconds'))} | "
                      f"{c['result']}{': ' + c['reason'][:200] if c.get('reason') else ''}"
                      f"{' (closest: ' + c['closest'] + ')' if c.get('closest') else ''} |" for c in self.candidates]
        if self.sizes_mb:
            lines += ["", "## Sizes", "", "| artifact | MB |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in self.sizes_mb.items()]
        if self.published:
            pub = self.published
            lines += ["", f"Published `{pub['model_name']}` version {pub['version']} to `{pub['repo_dir']}`."]
            if "native_plan" in pub:
                native = pub["native_plan"]
                lines.append(f"Native Triton TensorRT model `{native['model_name']}` version {native['version']} in "
                             f"`{native['repo_dir']}` (for a Triton GPU server with the TensorRT that built it).")
        lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in self.versions.items()), ""]
        return "\n".join(lines)


def traffic_summary(profile: Any) -> dict[str, Any]:
    """What the report keeps of a traffic.TrafficProfile: where it came from and its length summary (engine.json
    keeps the lengths themselves)."""
    return {"source": profile.source, "batch_sizes": list(profile.batch_sizes),
            "max_sequence_length": profile.max_sequence_length, **profile.summary()}


def _traffic_rows(profile: dict[str, Any]) -> list[str]:
    return ["Runtimes were timed on these token lengths, changing call to call, at these batch sizes.", "",
            "| texts | source | mean | p50 | p90 | p99 | max tokens | batch sizes |",
            "|---|---|---|---|---|---|---|---|",
            f"| {profile['texts']} | {profile['source']} | {profile['mean']} | {profile['p50']:g} | "
            f"{profile['p90']:g} | {profile['p99']:g} | {profile['max']} | {_fmt(profile['batch_sizes'])} |"]


def _classifier_rows(val: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    return ["| metric | value |", "|---|---|",
            f"| examples | {val['examples']} |",
            f"| fp32 PyTorch accuracy | {_fmt(val['reference_accuracy'])} % |",
            f"| engine accuracy | {_fmt(val['engine_accuracy'])} % |",
            f"| accuracy drop | {_fmt(val['accuracy_drop'])} points (budget {budget['max_accuracy_drop']}) |",
            f"| argmax agreement | {val['agreement']:.2%} (budget ≥ {budget['min_agreement']:.0%}) |",
            f"| max / mean abs logit diff | {val['max_abs_logit_diff']:.4g} / {val['mean_abs_logit_diff']:.3g} |"]


def _token_rows(val: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    return ["| metric | value |", "|---|---|",
            f"| texts / tokens | {val['examples']} / {val['tokens']} |",
            f"| entity F1, fp32 PyTorch | {_fmt(val['reference_f1'])} |",
            f"| entity F1, engine | {_fmt(val['engine_f1'])} |",
            f"| entity F1 drop | {_fmt(val['accuracy_drop'])} points (budget {budget['max_accuracy_drop']}) |",
            f"| per-token tag agreement | {val['agreement']:.2%} (budget ≥ {budget['min_agreement']:.0%}) |",
            f"| engine entities vs fp32 entities (F1) | {val['f1_vs_reference']:.2f} |",
            f"| max abs logit diff | {val['max_abs_logit_diff']:.4g} |"]


def _embedding_rows(val: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    return ["| metric | value |", "|---|---|",
            f"| texts embedded | {val['examples']} ({val['recall_pairs']} query/positive pairs) |",
            f"| cosine to fp32, mean | {val['cosine_mean']:.5f} (budget ≥ {budget['min_cosine_mean']}) |",
            f"| cosine to fp32, worst text | {val['cosine_worst']:.5f} (budget ≥ {budget['min_cosine_worst']}) |",
            f"| recall@10 fp32 → engine | {_fmt(val['reference_recall'])} % → {_fmt(val['engine_recall'])} % "
            f"(drop budget {budget['max_recall_drop']} points) |",
            f"| max abs embedding diff | {val['max_abs_diff']:.4g} |"]


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f} s" if value < 60 else f"{value / 60:.1f} min"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)
