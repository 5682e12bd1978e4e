"""Accuracy-budget search: try a preset's candidate configurations in order, keep the first that fits.

A preset such as `fast-cpu` lists candidates from most to least aggressive (e.g. prune 50 %, prune 25 %,
no pruning). Each candidate is a full build; one that misses the accuracy budget is recorded and the
next is tried. Only a build that passed validation reaches its publish step, so nothing that failed
the budget is ever served. If no candidate fits, the error lists what was tried and why each failed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from engineforge import progress
from engineforge.errors import AccuracyBudgetExceeded

from .config import BuildConfig
from .pipeline import check_build
from .report import BuildReport
from .runner import run_build


def run_candidates(candidates: Sequence[tuple[str, BuildConfig]]) -> BuildReport:
    """Run (name, config) candidates in order; return the first successful build's report."""
    for _, config in candidates:  # refuse an impossible candidate before the first one spends any time
        check_build(config)
    tried: list[dict[str, Any]] = []
    for index, (name, config) in enumerate(candidates, start=1):
        if len(candidates) > 1:
            progress.info(f"candidate {index}/{len(candidates)}: {name}")
        # Later candidates reuse the output directory of the failed ones.
        attempt = config if index == 1 else dataclasses.replace(config, overwrite=True)
        try:
            report = run_build(attempt)
        except AccuracyBudgetExceeded as exc:
            tried.append({"candidate": name, "result": "outside budget", "reason": str(exc)})
            progress.info(f"candidate {index}/{len(candidates)} ({name}) is outside the budget; trying the next")
            continue
        if len(candidates) > 1:
            report.candidates = [*tried, {"candidate": name, "result": "chosen"}]
            report.write(config.output_dir)
            (config.output_dir / "candidates.json").write_text(json.dumps(report.candidates, indent=2) + "\n")
        return report
    summary = "\n".join(f"- {t['candidate']}: {t['reason']}" for t in tried)
    raise AccuracyBudgetExceeded(f"no candidate configuration fits the accuracy budget. Tried:\n{summary}")
