"""`engineforge tune` results: the trial records and the `tune_report.{json,md}` they are written to."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge.errors import EngineforgeError

REPORT_STEM = "tune_report"


@dataclass(frozen=True)
class TrialSettings:
    """One grid point: what the engine model (and its tokenizer/ensemble) is configured with."""

    instances: int
    max_batch_size: int
    max_queue_delay_us: int

    def label(self) -> str:
        return f"{self.instances} inst, batch {self.max_batch_size}, delay {self.max_queue_delay_us} us"


@dataclass(frozen=True)
class LevelStats:
    concurrency: int
    p50_ms: float | None
    p99_ms: float | None
    throughput_rps: float
    errors: int


@dataclass(frozen=True)
class Trial:
    settings: TrialSettings
    levels: tuple[LevelStats, ...] = ()
    error: str | None = None  # the server did not start, or the load test failed

    def meets(self, slo_p99_ms: float) -> bool:
        """No error, no failed request, and p99 within the SLO at every concurrency level."""
        return (self.error is None and bool(self.levels)
                and all(lv.errors == 0 and lv.p99_ms is not None and lv.p99_ms <= slo_p99_ms for lv in self.levels))

    @property
    def throughput_rps(self) -> float:
        """Capacity: the best throughput over the levels (normally the highest concurrency)."""
        return max((lv.throughput_rps for lv in self.levels), default=0.0)

    @property
    def p50_ms(self) -> float:
        """p50 at the lowest concurrency level: what a lone request sees (the tie-break)."""
        lowest = min(self.levels, key=lambda lv: lv.concurrency, default=None)
        return float("inf") if lowest is None or lowest.p50_ms is None else lowest.p50_ms

    @property
    def worst_p99_ms(self) -> float:
        return max((lv.p99_ms if lv.p99_ms is not None else float("inf") for lv in self.levels), default=float("inf"))

    def to_dict(self) -> dict[str, Any]:
        return {"instances": self.settings.instances, "max_batch_size": self.settings.max_batch_size,
                "max_queue_delay_us": self.settings.max_queue_delay_us, "error": self.error,
                "throughput_rps": self.throughput_rps, "levels": [vars(lv) for lv in self.levels]}


@dataclass(frozen=True)
class TuneResult:
    model: str
    slo_p99_ms: float
    trials: tuple[Trial, ...]
    best: Trial | None
    report_json: Path
    report_md: Path
    applied_to: Path | None = None  # the config.pbtxt written with apply=True


class SLONotMetError(EngineforgeError):
    """No configuration of the grid met the latency SLO; `best` is the closest one (lowest worst-level p99)."""

    def __init__(self, message: str, best: Trial | None, report_md: Path) -> None:
        super().__init__(message)
        self.best = best
        self.report_md = report_md


def pick_best(trials: Sequence[Trial], slo_p99_ms: float) -> Trial | None:
    """Highest throughput among the trials that meet the SLO; ties go to the lower p50 at low load."""
    meeting = [t for t in trials if t.meets(slo_p99_ms)]
    return max(meeting, key=lambda t: (round(t.throughput_rps, 6), -t.p50_ms), default=None)


def closest(trials: Sequence[Trial]) -> Trial | None:
    ran = [t for t in trials if t.error is None and t.levels]
    return min(ran, key=lambda t: t.worst_p99_ms, default=None)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(model: str, slo_p99_ms: float, trials: Sequence[Trial], best: Trial | None,
             settings: Mapping[str, Any]) -> str:
    levels = sorted({lv.concurrency for t in trials for lv in t.levels})
    header = ["#", "instances", "max batch", "queue delay (us)"]
    for c in levels:
        header += [f"c{c} p50 (ms)", f"c{c} p99 (ms)", f"c{c} req/s"]
    header += ["meets SLO", "note"]
    lines = [f"# engineforge tune: {model}", "",
             f"SLO: p99 <= {slo_p99_ms:g} ms at every concurrency level; best = highest throughput meeting it "
             "(tie-break: lower p50 at the lowest level).",
             f"Load: {settings.get('mode')} mode, {settings.get('duration_s')} s per level after "
             f"{settings.get('warmup_s')} s warm-up.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for number, trial in enumerate(trials, 1):
        by_level = {lv.concurrency: lv for lv in trial.levels}
        row = [str(number), str(trial.settings.instances), str(trial.settings.max_batch_size),
               str(trial.settings.max_queue_delay_us)]
        for c in levels:
            lv = by_level.get(c)
            row += ["-", "-", "-"] if lv is None else [_ms(lv.p50_ms), _ms(lv.p99_ms), f"{lv.throughput_rps:.1f}"]
        error = (trial.error or "").replace("|", "/").strip().splitlines()
        row += ["yes" if trial.meets(slo_p99_ms) else "no", "**best**" if trial is best else (error or [""])[0][:120]]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"Best: {best.settings.label()}, {best.throughput_rps:.1f} req/s" if best
                 else "No configuration met the SLO.")
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, model: str, slo_p99_ms: float, trials: Sequence[Trial], best: Trial | None,
                 settings: Mapping[str, Any]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"model": model, "slo_p99_ms": slo_p99_ms, "settings": dict(settings),
            "best": None if best is None else best.to_dict(), "trials": [t.to_dict() for t in trials]}
    json_path, md_path = out_dir / f"{REPORT_STEM}.json", out_dir / f"{REPORT_STEM}.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown(model, slo_p99_ms, trials, best, settings), encoding="utf-8")
    return json_path, md_path
