"""Accuracy-budget search: try a preset's candidate configurations in order, keep the first that fits.

A preset such as `fast-cpu` lists candidates from most to least aggressive (e.g. prune 50 %, prune 25 %,
no pruning). Each candidate is a full build; one that misses the accuracy budget is recorded and the
next is tried. Only a build that passed validation reaches its publish step, so nothing that failed
the budget is ever served. If no candidate fits, the error lists what was tried, why each failed and
which came closest.

Time: before the first candidate, the estimated time of each and of the whole ladder is printed
(`estimate.py`). With a time limit (`max_build_minutes`, `--max-build-minutes`), a candidate estimated past
the time left is skipped (a milder one is cheaper and may still fit), a distillation running at the limit
stops at its next training step, and once the time is up no candidate starts: the build fails with
BuildTimeLimitReached naming every candidate's outcome and the one closest to the budget. Nothing is published.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.errors import AccuracyBudgetExceeded, BuildTimeLimitReached, EngineforgeError

from .accuracy import Budget
from .config import BuildConfig
from .estimate import announce
from .pipeline import BUILD_LOG, check_build
from .refusal import matching_preset
from .report import BuildReport
from .runner import run_build
from .steps import DistillConfig, PruneConfig, ValidateConfig
from .time_limit import TimeLimit, closest, describe, minutes, shortfall

_TIMED_OUT = ("skipped", "not started", "stopped by the time limit")


def run_candidates(candidates: Sequence[tuple[str, BuildConfig]], time_limit: TimeLimit | None = None,
                   estimates: Sequence[float | None] | None = None, *, recipe_checked: bool = False) -> BuildReport:
    """Run (name, config) candidates in order; return the first successful build's report. The time limit
    defaults to the first config's `max_build_minutes`, counted from now; `estimates` (seconds per candidate)
    replace the measured estimate (tests); `recipe_checked`: the caller ran `check_build` on every candidate."""
    if not recipe_checked:  # refuse an impossible candidate before the first one spends any time
        for _, config in candidates:
            check_build(config)
    first = candidates[0][1]
    limit = time_limit or (TimeLimit.start(first.max_build_minutes) if first.max_build_minutes else None)
    if estimates is None:
        estimates = announce(candidates) if limit or _trains(candidates) else [None] * len(candidates)
    if limit is not None:
        progress.info(f"time limit {minutes(limit.minutes * 60)}: a candidate estimated past the time left is "
                      "skipped, a distillation running at the limit stops at its next step")
    tried: list[dict[str, Any]] = []
    ran = False
    for index, ((name, config), estimate) in enumerate(zip(candidates, estimates, strict=True), start=1):
        label = f"candidate {index}/{len(candidates)}"
        entry: dict[str, Any] = {"candidate": name}
        if estimate is not None:
            entry["estimated_s"] = round(estimate, 1)
        if limit is not None and (held_back := _time_check(limit, estimate)):
            tried.append(entry | held_back)
            progress.info(f"{label} ({name}) {held_back['result']}: {held_back['reason']}")
            continue
        if len(candidates) > 1:
            progress.info(f"{label}: {name}")
        # Later candidates reuse the output directory of the failed ones.
        attempt = dataclasses.replace(config, overwrite=config.overwrite or ran, time_limit=limit)
        ran, started = True, time.monotonic()
        try:
            report = run_build(attempt, recipe_checked=True)
        except AccuracyBudgetExceeded as exc:
            tried.append(entry | _missed(exc, config, started))
            progress.info(f"{label} ({name}) is outside the budget; trying the next")
            continue
        except BuildTimeLimitReached as exc:
            tried.append(entry | {"result": "stopped by the time limit", "reason": str(exc),
                                  "seconds": round(time.monotonic() - started, 1)})
            continue
        if len(candidates) > 1 or tried:
            _record(report, config.output_dir, [*tried, entry | {"result": "chosen", "seconds": round(
                time.monotonic() - started, 1)}], limit)
        return report
    raise _failure(candidates, tried, limit, estimates)


def _trains(candidates: Sequence[tuple[str, BuildConfig]]) -> bool:
    """Whether a candidate prunes or distils: the long steps an estimate is worth measuring for."""
    return any(isinstance(s, PruneConfig | DistillConfig) for _, config in candidates for s in config.steps)


def _time_check(limit: TimeLimit, estimate: float | None) -> dict[str, str] | None:
    """Why a candidate is not started under the limit, or None to start it."""
    if limit.expired():
        return {"result": "not started", "reason": "the time limit was reached"}
    left = limit.remaining_s()
    if estimate is not None and estimate > left:
        return {"result": "skipped", "reason": f"estimated ~{minutes(estimate)}, {minutes(left)} left"}
    return None


def _missed(exc: AccuracyBudgetExceeded, config: BuildConfig, started: float) -> dict[str, Any]:
    validate = config.step(ValidateConfig)
    budget = validate.budget if isinstance(validate, ValidateConfig) else Budget()
    entry: dict[str, Any] = {"result": "outside budget", "reason": str(exc),
                             "seconds": round(time.monotonic() - started, 1)}
    scored = [(s, f) for f in exc.figures if (s := shortfall(f, budget)) is not None]
    if scored:
        points, figures = min(scored, key=lambda pair: pair[0])
        entry |= {"shortfall": points, "closest": describe(figures)}
    return entry


def _failure(candidates: Sequence[tuple[str, BuildConfig]], tried: list[dict[str, Any]], limit: TimeLimit | None,
             estimates: Sequence[float | None]) -> EngineforgeError:
    """The error ending a search that chose nothing, after recording the candidates in the build report."""
    out_dir = candidates[0][1].output_dir
    summary = "\n".join(f"- {t['candidate']}: {t['result']}: {t['reason'][:300]}" for t in tried)
    best = closest(tried)
    finished = any(t["result"] == "outside budget" for t in tried)
    near = (f"Closest to the budget: {best['candidate']} ({best['closest']}; {best['shortfall']:g} points short)"
            if best else "No finished candidate measured what the budget bounds" if finished
            else "No candidate finished")
    error: EngineforgeError
    if limit is None or not any(t["result"] in _TIMED_OUT for t in tried):
        error = AccuracyBudgetExceeded(f"no candidate configuration fits the accuracy budget. Tried:\n{summary}"
                                       + (f"\n{near}." if best else "") + f"\nLog: {out_dir / BUILD_LOG}")
    else:
        whole = sum(e for e in estimates if e is not None)
        more = f" (the whole ladder was estimated at ~{minutes(whole)})" if whole else ""
        mildest = matching_preset(candidates[-1][1].steps) if len(candidates) > 1 else None
        alone = f", or use preset '{mildest}' (this ladder's last candidate alone)" if mildest else ""
        error = BuildTimeLimitReached(
            f"the build time limit of {minutes(limit.minutes * 60)} ended the search before a candidate met the "
            f"accuracy budget; nothing was published. {near}. Candidates:\n{summary}\nGive the build more time "
            f"with --max-build-minutes{more}{alone}."
            + (f" Log: {out_dir / BUILD_LOG}" if any("seconds" in t for t in tried) else ""))
    _record_failure(candidates[0][1], tried, error, limit)
    return error


def _record(report: BuildReport, out_dir: Path, tried: list[dict[str, Any]], limit: TimeLimit | None) -> None:
    report.candidates = tried
    if limit is not None:
        report.settings["max_build_minutes"] = limit.minutes
    report.write(out_dir)
    (out_dir / "candidates.json").write_text(json.dumps(tried, indent=2) + "\n")


def _record_failure(config: BuildConfig, tried: list[dict[str, Any]], error: EngineforgeError,
                    limit: TimeLimit | None) -> None:
    """Add the whole search to the last candidate's log (a failed build keeps only its log); when no candidate ran,
    nothing was written and nothing is."""
    log = config.output_dir / BUILD_LOG
    if not any("seconds" in t for t in tried) or not log.is_file():
        return
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n\n## Candidate search\n\n{type(error).__name__}: {error}\n\n"
                     + json.dumps({"candidates": tried, "max_build_minutes": limit.minutes if limit else None},
                                  indent=2) + "\n")
