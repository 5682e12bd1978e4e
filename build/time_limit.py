"""The build's wall-clock budget (`--max-build-minutes`) and what a ladder reports when it runs out.

One `TimeLimit` is started for a preset's whole ladder; each candidate's BuildConfig carries it, and the distill
step (the long one: ~20 min a rung on a real model) checks it at every training step. The clock is injectable,
so a test drives the limit without waiting for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engineforge.errors import BuildTimeLimitReached


@dataclass(frozen=True)
class TimeLimit:
    minutes: float
    deadline: float  # on `clock`
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    @classmethod
    def start(cls, minutes: float, clock: Callable[[], float] = time.monotonic) -> TimeLimit:
        return cls(minutes, clock() + minutes * 60, clock)

    def remaining_s(self) -> float:
        return self.deadline - self.clock()

    def expired(self) -> bool:
        return self.remaining_s() <= 0

    def reached(self, where: str) -> BuildTimeLimitReached:
        return BuildTimeLimitReached(f"the build time limit of {minutes(self.minutes * 60)} was reached {where}")


def minutes(seconds: float) -> str:
    """A duration as people read it in a log: "40 s", "2.5 min", "18 min"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 600 else f"{seconds / 60:.0f} min"


# (figure, budget field, +1 = at least / -1 = at most, points per unit): how far a result is from its budget.
_BOUNDS = (("agreement", "min_agreement", 1, 100), ("accuracy_drop", "max_accuracy_drop", -1, 1),
           ("entity_f1_drop", "max_accuracy_drop", -1, 1), ("cosine_mean", "min_cosine_mean", 1, 100),
           ("cosine_worst", "min_cosine_worst", 1, 100), ("recall_drop", "max_recall_drop", -1, 1))


def shortfall(figures: dict[str, Any], budget: Any) -> float | None:
    """Points by which one judged engine misses the budget (summed over its measures; 0 = within), or None
    when it measured nothing the budget bounds (a runtime that could not run)."""
    total, known = 0.0, False
    for name, bound, sign, scale in _BOUNDS:
        value = figures.get(name)
        if isinstance(value, int | float):
            known = True
            total += max(0.0, (getattr(budget, bound) - value) * sign) * scale
    return round(total, 3) if known else None


def describe(figures: dict[str, Any]) -> str:
    parts = [f"agreement {figures['agreement']:.2%}" if "agreement" in figures else "",
             f"accuracy drop {figures['accuracy_drop']:.2f} points" if figures.get("accuracy_drop") is not None else "",
             f"entity F1 drop {figures['entity_f1_drop']:.2f} points" if figures.get("entity_f1_drop") is not None
             else "",
             f"cosine mean {figures['cosine_mean']:.4f}" if "cosine_mean" in figures else "",
             f"worst {figures['cosine_worst']:.4f}" if "cosine_worst" in figures else ""]
    runtime = f"{figures['runtime']}: " if "runtime" in figures else ""
    return runtime + ", ".join(p for p in parts if p)


def closest(tried: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The finished candidate nearest its budget (entries carry `shortfall`), or None if none finished."""
    finished = [t for t in tried if t.get("shortfall") is not None]
    return min(finished, key=lambda t: t["shortfall"]) if finished else None
