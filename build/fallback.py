"""Sensitivity-driven fp32 fallback for static int8: pure logic (grouping, ranking, the search).

How sensitivity is measured (the step supplies an `evaluate(excluded) -> Metrics` callback):
each group of quantizable nodes (a transformer layer, the pooler, the classifier; or single nodes)
is quantized *alone*, everything else fp32, and its logits are compared with fp32 on the eval set.
Quantizing one group at a time isolates its error; "everything except group i" would measure the
same thing against the noise of all other groups, where one group's share is hard to see on a few
hundred examples. Both cost one quantize + one eval pass per group; int8 errors of different layers
add roughly independently, so the isolated ranking is a sound order in which to give groups back to
fp32. The ranking key is (argmax flips, mean KL divergence): flips are what the budget counts, KL
separates groups that flip nothing yet.

The search then keeps the fewest groups in fp32: give back groups in ranking order until the
accuracy budget holds, then try re-quantizing each of them again (least sensitive first) and keep
any that the budget tolerates, since isolated rankings can overstate a group's share.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engineforge.errors import ConfigError

GRANULARITIES = ("layer", "node")
_LAYER = re.compile(r"(?:^|[/._])(layers?)[./_]?(\d+)(?=[/._]|$)")


def group_of(node_name: str, granularity: str) -> str:
    """`/model/bert/encoder/layer.3/attention/self/query/MatMul` -> `layer.3`, `/model/classifier/Gemm` ->
    `classifier`; with granularity "node" every node is its own group."""
    if granularity == "node":
        return node_name
    match = _LAYER.search(node_name)
    if match:
        return f"layer.{match.group(2)}"
    parts = [p for p in node_name.split("/") if p and p not in ("model", "bert", "roberta", "electra")]
    return parts[0] if len(parts) > 1 else node_name


def group_nodes(node_names: Sequence[str], granularity: str) -> dict[str, tuple[str, ...]]:
    """Groups in graph order, each with its nodes in graph order."""
    groups: dict[str, list[str]] = {}
    for name in node_names:
        groups.setdefault(group_of(name, granularity), []).append(name)
    return {group: tuple(nodes) for group, nodes in groups.items()}


def match_patterns(node_names: Sequence[str], patterns: Sequence[str]) -> tuple[str, ...]:
    """Nodes named by `patterns` (exact names or shell globs such as `*classifier*`), in graph order."""
    matched: set[str] = set()
    for pattern in patterns:
        hits = {n for n in node_names if n == pattern or fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            examples = ", ".join(list(node_names)[-3:])
            raise ConfigError(
                f"static_int8.keep_fp32 pattern {pattern!r} matches no quantizable node; give node names "
                f"or globs such as '*classifier*' (nodes look like: {examples})"
            )
        matched |= hits
    return tuple(n for n in node_names if n in matched)


@dataclass(frozen=True)
class Metrics:
    """An int8 candidate against the fp32 graph on the eval set."""

    agreement: float  # fraction of argmax matches with fp32
    flips: int  # examples whose argmax changed
    accuracy_drop: float | None  # percentage points (None without labels)
    kl: float  # mean KL(fp32 || int8) of the softmax outputs

    @classmethod
    def compare(cls, reference: np.ndarray, engine: np.ndarray, label_ids: Sequence[int] | None) -> Metrics:
        ref_pred, eng_pred = reference.argmax(axis=1), engine.argmax(axis=1)
        drop = None
        if label_ids is not None:
            labels = np.asarray(label_ids)
            drop = round(float(((ref_pred == labels).mean() - (eng_pred == labels).mean()) * 100), 3)
        log_p, log_q = _log_softmax(reference), _log_softmax(engine)
        kl = float((np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean())
        flips = int((ref_pred != eng_pred).sum())
        return cls(round(1 - flips / len(reference), 5), flips, drop, float(f"{max(kl, 0.0):.4g}"))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class Budget:
    max_accuracy_drop: float
    min_agreement: float

    def holds(self, metrics: Metrics) -> bool:
        drop_ok = metrics.accuracy_drop is None or metrics.accuracy_drop <= self.max_accuracy_drop
        return drop_ok and metrics.agreement >= self.min_agreement


@dataclass(frozen=True)
class Sensitivity:
    group: str
    nodes: tuple[str, ...]
    metrics: Metrics  # quantizing this group alone

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "nodes": len(self.nodes), **asdict(self.metrics)}


def rank(sensitivities: Sequence[Sensitivity]) -> list[Sensitivity]:
    """Worst offenders first: most flips, then highest KL; graph order breaks ties (stable sort)."""
    return sorted(sensitivities, key=lambda s: (s.metrics.flips, s.metrics.kl), reverse=True)


@dataclass(frozen=True)
class SearchStep:
    action: str  # "all quantized", "fp32 <group>", "re-quantize <group>"
    fp32_groups: tuple[str, ...]
    fp32_nodes: int
    metrics: Metrics
    within_budget: bool

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "fp32_groups": list(self.fp32_groups), "fp32_nodes": self.fp32_nodes,
                **asdict(self.metrics), "within_budget": self.within_budget}


@dataclass(frozen=True)
class FallbackDecision:
    steps: tuple[SearchStep, ...]
    chosen: int  # index into steps
    budget_met: bool
    stop_reason: str

    @property
    def fp32_groups(self) -> tuple[str, ...]:
        return self.steps[self.chosen].fp32_groups


Evaluate = Callable[[tuple[str, ...]], Metrics]


def search_fallback(ranking: Sequence[Sensitivity], evaluate: Evaluate, budget: Budget, max_nodes: int,
                    baseline: Metrics) -> FallbackDecision:
    """Fewest groups in fp32 (at most `max_nodes` nodes) for which `budget` holds; `evaluate` gets the
    excluded node names. `baseline` is the all-quantized result. Without a solution, the best step wins."""
    nodes_of = {s.group: s.nodes for s in ranking}
    steps = [SearchStep("all quantized", (), 0, baseline, budget.holds(baseline))]

    def trial(action: str, groups: tuple[str, ...]) -> SearchStep:
        excluded = tuple(n for g in groups for n in nodes_of[g])
        metrics = evaluate(excluded)
        step = SearchStep(action, groups, len(excluded), metrics, budget.holds(metrics))
        steps.append(step)
        return step

    if steps[0].within_budget:
        return FallbackDecision(tuple(steps), 0, True, "budget met with every node quantized")
    groups: tuple[str, ...] = ()
    reason = "every ranked group is back in fp32 and the budget still fails"
    for sensitivity in ranking:
        if sum(len(nodes_of[g]) for g in groups) + len(sensitivity.nodes) > max_nodes:
            reason = f"max_fallback_nodes={max_nodes} reached before the budget held"
            break
        groups = (*groups, sensitivity.group)
        if trial(f"fp32 {sensitivity.group}", groups).within_budget:
            reason = "budget met"
            break
    if not steps[-1].within_budget:
        best = max(range(len(steps)), key=lambda i: _goodness(steps[i]))
        return FallbackDecision(tuple(steps), best, False, reason)
    chosen = len(steps) - 1
    for group in reversed(groups[:-1]):  # the last group added is needed: without it the budget failed
        kept = tuple(g for g in steps[chosen].fp32_groups if g != group)
        if trial(f"re-quantize {group}", kept).within_budget:
            chosen = len(steps) - 1
    return FallbackDecision(tuple(steps), chosen, True, reason)


def _goodness(step: SearchStep) -> tuple[float, float, float, int]:
    drop = step.metrics.accuracy_drop if step.metrics.accuracy_drop is not None else 0.0
    return (step.metrics.agreement, -drop, -step.metrics.kl, -step.fp32_nodes)
