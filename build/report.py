"""Build report: JSON for machines, Markdown for people. Also records package versions for reproducibility."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("engineforge", "torch", "transformers", "onnx", "onnxruntime", "numpy", "tokenizers")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def write_reports(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    json_path, md_path = out_dir / "build_report.json", out_dir / "build_report.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path


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


def render_markdown(report: dict[str, Any]) -> str:
    ckpt = report.get("checkpoint", {})
    lines = [
        f"# Build report: {report.get('status', '?').upper()}",
        "",
        f"- checkpoint: `{ckpt.get('path')}` ({ckpt.get('architecture')}, "
        f"weights sha256 {str(ckpt.get('weights_sha256'))[:12]}…)",
        f"- preset: {report.get('preset') or 'custom recipe'}; precision: {report.get('precision')}",
        f"- total time: {report.get('total_seconds', 0):.1f} s",
    ]
    if report.get("error"):
        lines.append(f"- **error**: {report['error']}")
    lines += ["", "## Steps", "", "| # | step | seconds | what it did |", "|---|---|---|---|"]
    for i, step in enumerate(report.get("steps", []), start=1):
        details = "; ".join(f"{k}={_fmt(v)}" for k, v in step["details"].items())
        lines.append(f"| {i} | {step['name']} | {step['seconds']:.2f} | {details} |")
    val = report.get("validation")
    if val:
        lines += ["", "## Accuracy (eval set)", "", "| metric | value |", "|---|---|"]
        lines += [
            f"| examples | {val['examples']} |",
            f"| fp32 PyTorch accuracy | {_fmt(val['reference_accuracy'])} % |",
            f"| engine accuracy | {_fmt(val['engine_accuracy'])} % |",
            f"| accuracy drop | {_fmt(val['accuracy_drop'])} points (budget {val['budget']['max_accuracy_drop']}) |",
            f"| argmax agreement | {val['agreement']:.2%} (budget ≥ {val['budget']['min_agreement']:.0%}) |",
            f"| max / mean abs logit diff | {val['max_abs_logit_diff']:.4g} / {val['mean_abs_logit_diff']:.3g} |",
        ]
    if report.get("candidates"):
        lines += ["", "## Candidates tried (most aggressive first)", "", "| candidate | result |", "|---|---|"]
        lines += [f"| {c['candidate']} | {c['result']}{': ' + c['reason'][:200] if c.get('reason') else ''} |"
                  for c in report["candidates"]]
    sizes = report.get("sizes_mb")
    if sizes:
        lines += ["", "## Sizes", "", "| artifact | MB |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sizes.items()]
    if report.get("published"):
        pub = report["published"]
        lines += ["", f"Published `{pub['model_name']}` version {pub['version']} to `{pub['repo_dir']}`."]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items()), ""]
    return "\n".join(lines)
