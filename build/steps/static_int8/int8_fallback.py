"""Sensitivity-driven fp32 fallback for static int8: pure logic (grouping, ranking, the search).

How sensitivity is measured (the step supplies an `evaluate(excluded) -> Comparison` callback):
each group of quantizable nodes (one projection across all layers, a transformer layer, the pooler,
the classifier; or single nodes) is quantized *alone*, everything else fp32, and its logits are
compared with fp32 on the eval set.
Quantizing one group at a time isolates its error; "everything except group i" would measure the
same thing against the noise of all other groups, where one group's share is hard to see on a few
hundred examples. Both cost one quantize + one eval pass per group; int8 errors of different layers
add roughly independently, so the isolated ranking is a sound order in which to give groups back to
fp32. The ranking key is (argmax flips, margin shift): flips are what the budget counts; the margin
shift (how much of fp32's top-1 vs runner-up margin the int8 logits moved, per example, capped at 1)
separates groups that flip nothing yet. It stays informative where softmax saturates (a confident
fine-tuned head), unlike KL divergence, which is ~0 there whatever the logits do.

The search then keeps the fewest nodes in fp32: give back groups in ranking order until the
accuracy budget holds, then try re-quantizing each of them again and then each single node of what
is left, keeping whatever the budget tolerates (an isolated ranking can overstate a group's share,
and a group is coarser than the offending nodes). Groups make the measuring pass cheap (about ten
quantize+eval passes for a BERT instead of one per node); the node pass costs one per fp32 node.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engineforge.errors import ConfigError

from ...accuracy import Budget, Comparison
from ...embedding_quality import EmbeddingComparison

GRANULARITIES = ("role", "layer", "node")
_LAYER = re.compile(r"(?:^|[/._])(layers?)[./_]?(\d+)(?=[/._]|$)")


def group_of(node_name: str, granularity: str) -> str:
    """The fallback unit a node belongs to.

    "role": the same projection in every layer, as a glob usable in keep_fp32
    (`/model/bert/encoder/layer.3/output/dense/MatMul` -> `*layer.*/output/dense/MatMul`);
    "layer": one transformer layer (`layer.3`); both put `/model/classifier/Gemm` in `classifier`;
    "node": every node on its own.
    """
    if granularity == "node":
        return node_name
    match = _LAYER.search(node_name)
    if match and granularity == "role":
        return f"*{node_name[match.start(1):match.start(2)]}*{node_name[match.end(2):]}"
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
class Sensitivity:
    group: str
    nodes: tuple[str, ...]
    metrics: Comparison | EmbeddingComparison  # quantizing this group alone

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "nodes": len(self.nodes), **self.metrics.figures()}


def rank(sensitivities: Sequence[Sensitivity]) -> list[Sensitivity]:
    """Worst offenders first: most flips, then largest margin shift; graph order breaks ties (stable sort)."""
    return sorted(sensitivities, key=lambda s: s.metrics.badness(), reverse=True)


@dataclass(frozen=True)
class SearchStep:
    action: str  # "all quantized", "fp32 <group>", "re-quantize <group>", "re-quantize node <name>"
    fp32_nodes: tuple[str, ...]  # the nodes kept fp32 in this candidate
    fp32_groups: tuple[str, ...]  # the same, summarised: "<group>" or "<group> (k/n nodes)"
    metrics: Comparison | EmbeddingComparison
    within_budget: bool

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "fp32_groups": list(self.fp32_groups), "fp32_nodes": len(self.fp32_nodes),
                **self.metrics.figures(), "within_budget": self.within_budget}


@dataclass(frozen=True)
class FallbackDecision:
    steps: tuple[SearchStep, ...]
    chosen: int  # index into steps
    budget_met: bool
    stop_reason: str

    @property
    def fp32_nodes(self) -> tuple[str, ...]:
        return self.steps[self.chosen].fp32_nodes


Evaluate = Callable[[tuple[str, ...]], Comparison | EmbeddingComparison]


def search_fallback(ranking: Sequence[Sensitivity], evaluate: Evaluate, budget: Budget, max_nodes: int,
                    baseline: Comparison | EmbeddingComparison, refine_nodes: bool = True) -> FallbackDecision:
    """Fewest nodes in fp32 (at most `max_nodes`) for which `budget` holds; `evaluate` gets the excluded
    node names, `baseline` is the all-quantized result. Without a solution, the best candidate wins.

    Forward: give whole groups back to fp32 in ranking order until the budget holds. Backward: try
    re-quantizing each of those groups (the isolated ranking can overstate one), then, with
    `refine_nodes`, each single node of the groups left (deepest first), keeping whatever the budget tolerates.
    """
    order = {n: i for i, n in enumerate(n for s in ranking for n in s.nodes)}
    steps = [SearchStep("all quantized", (), (), baseline, budget.holds(baseline))]

    def trial(action: str, nodes: set[str]) -> bool:
        excluded = tuple(sorted(nodes, key=order.__getitem__))
        metrics = evaluate(excluded)
        steps.append(SearchStep(action, excluded, _summary(ranking, nodes), metrics, budget.holds(metrics)))
        return steps[-1].within_budget

    if steps[0].within_budget:
        return FallbackDecision(tuple(steps), 0, True, "budget met with every node quantized")
    added: list[Sensitivity] = []
    excluded: set[str] = set()
    reason = "every ranked group is back in fp32 and the budget still fails"
    for sensitivity in ranking:
        if len(excluded) + len(sensitivity.nodes) > max_nodes:
            reason = f"max_fallback_nodes={max_nodes} reached before the budget held"
            break
        added.append(sensitivity)
        excluded |= set(sensitivity.nodes)
        if trial(f"fp32 {sensitivity.group}", excluded):
            reason = "budget met"
            break
    if not steps[-1].within_budget:
        best = max(range(len(steps)), key=lambda i: _goodness(steps[i]))
        return FallbackDecision(tuple(steps), best, False, reason)
    chosen = len(steps) - 1
    for sensitivity in reversed(added[:-1]):  # the last group added is needed: without it the budget failed
        if trial(f"re-quantize {sensitivity.group}", excluded - set(sensitivity.nodes)):
            excluded, chosen = excluded - set(sensitivity.nodes), len(steps) - 1
    if refine_nodes:
        for node in sorted(excluded, key=order.__getitem__, reverse=True):
            if len(excluded) > 1 and trial(f"re-quantize node {node}", excluded - {node}):
                excluded, chosen = excluded - {node}, len(steps) - 1
    return FallbackDecision(tuple(steps), chosen, True, reason)


def _summary(ranking: Sequence[Sensitivity], nodes: set[str]) -> tuple[str, ...]:
    out = []
    for s in ranking:
        kept = sum(n in nodes for n in s.nodes)
        if kept:
            out.append(s.group if kept == len(s.nodes) else f"{s.group} ({kept}/{len(s.nodes)} nodes)")
    return tuple(out)


def _goodness(step: SearchStep) -> tuple[float, ...]:
    return (*step.metrics.goodness(), -len(step.fp32_nodes))
