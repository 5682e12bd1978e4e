"""Fallback search for static int8 on fake sensitivities: grouping, ranking, fewest fp32 groups, records."""

from __future__ import annotations

import numpy as np
import pytest

from engineforge.build.accuracy import Budget, compare_logits
from engineforge.build.accuracy import Comparison as Metrics  # the figures the fallback search ranks by
from engineforge.build.steps.static_int8.int8_fallback import (
    Sensitivity,
    group_nodes,
    group_of,
    match_patterns,
    rank,
    search_fallback,
)
from engineforge.errors import ConfigError

NODES = [
    "/model/bert/encoder/layer.0/attention/self/query/MatMul",
    "/model/bert/encoder/layer.0/output/dense/MatMul",
    "/model/bert/encoder/layer.1/attention/self/query/MatMul",
    "/model/bert/encoder/layer.1/output/dense/MatMul",
    "/model/bert/pooler/dense/Gemm",
    "/model/classifier/Gemm",
]
BUDGET = Budget(max_accuracy_drop=1.0, min_agreement=0.98)


def metrics(agreement: float, shift: float = 0.1, drop: float | None = 0.0) -> Metrics:
    return Metrics(agreement=agreement, flips=round((1 - agreement) * 100), accuracy_drop=drop, margin_shift=shift)


def sensitivity(group: str, flips: int, shift: float, nodes: int = 2) -> Sensitivity:
    return Sensitivity(group, tuple(f"{group}/n{i}" for i in range(nodes)),
                       Metrics(1 - flips / 100, flips, None, shift))


def test_nodes_are_grouped_by_role_layer_or_node():
    assert group_of(NODES[0], "layer") == "layer.0"
    assert group_of("/roberta/encoder/layers_11/ffn/MatMul", "layer") == "layer.11"
    assert group_of("/model/classifier/out_proj/Gemm", "layer") == "classifier"
    assert group_of("MatMul_7", "layer") == "MatMul_7"
    assert group_of(NODES[0], "node") == NODES[0]
    assert group_of(NODES[3], "role") == "*layer.*/output/dense/MatMul"
    assert group_of("/roberta/encoder/layers_11/ffn/MatMul", "role") == "*layers_*/ffn/MatMul"
    assert group_of(NODES[5], "role") == "classifier"
    roles = group_nodes(NODES, "role")
    assert roles["*layer.*/attention/self/query/MatMul"] == (NODES[0], NODES[2])
    assert match_patterns(NODES, ["*layer.*/output/dense/MatMul"]) == roles["*layer.*/output/dense/MatMul"]
    groups = group_nodes(NODES, "layer")
    assert list(groups) == ["layer.0", "layer.1", "pooler", "classifier"]
    assert groups["layer.1"] == tuple(NODES[2:4])
    assert len(group_nodes(NODES, "node")) == len(NODES)


def test_keep_fp32_patterns_match_names_and_globs_and_refuse_typos():
    assert match_patterns(NODES, ["*classifier*"]) == (NODES[5],)
    assert match_patterns(NODES, [NODES[4], "*layer.1/*"]) == (NODES[2], NODES[3], NODES[4])
    with pytest.raises(ConfigError, match=r"'\*clasifier\*' matches no quantizable node.*classifier/Gemm"):
        match_patterns(NODES, ["*clasifier*"])


def test_metrics_count_flips_accuracy_and_margin_shift():
    reference = np.array([[3.0, 1.0], [0.0, 2.0], [2.0, 0.0], [0.0, 4.0]])
    engine = np.array([[2.0, 1.0], [0.0, 2.0], [0.0, 1.0], [0.0, 4.0]])  # row 0 loses half its margin, row 2 flips
    result = compare_logits(reference, engine, label_ids=[0, 1, 0, 0])
    assert result.flips == 1 and result.agreement == 0.75
    assert result.accuracy_drop == 25.0  # 75 % -> 50 %
    assert result.margin_shift == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert compare_logits(reference, reference, None).margin_shift == 0 and BUDGET.holds(
        compare_logits(reference, reference, None))


def test_worst_metrics_over_runtimes():
    worst = Metrics.worst([Metrics(0.99, 1, 0.5, 0.1), Metrics(0.97, 3, None, 0.05), Metrics(1.0, 0, 0.0, 0.2)])
    assert worst == Metrics(0.97, 3, 0.5, 0.2)
    assert Metrics.worst([Metrics(1.0, 0, None, 0.0)]).accuracy_drop is None


def test_budget_needs_both_agreement_and_accuracy():
    assert BUDGET.holds(metrics(0.99, drop=0.5))
    assert not BUDGET.holds(metrics(0.97, drop=0.0))
    assert not BUDGET.holds(metrics(1.0, drop=1.5))
    assert BUDGET.holds(metrics(0.98, drop=None))  # unlabelled eval data: agreement only


def test_ranking_puts_flips_first_then_margin_shift():
    ranked = rank([sensitivity("layer.0", 0, 0.3), sensitivity("pooler", 2, 0.1), sensitivity("layer.1", 0, 0.5),
                   sensitivity("classifier", 2, 0.2)])
    assert [s.group for s in ranked] == ["classifier", "pooler", "layer.1", "layer.0"]
    assert ranked[0].to_dict() == {"group": "classifier", "nodes": 2, "agreement": 0.98, "flips": 2,
                                   "accuracy_drop": None, "margin_shift": 0.2}


class FakeModel:
    """Agreement = 1 - the harm of every node still quantized (harm is per node, e.g. "pooler/n0")."""

    def __init__(self, harm: dict[str, float]) -> None:
        self.harm, self.calls = harm, []

    def evaluate(self, excluded: tuple[str, ...]) -> Metrics:
        self.calls.append(excluded)
        return metrics(round(1 - sum(h for node, h in self.harm.items() if node not in excluded), 5))


def test_no_search_when_everything_quantized_meets_the_budget():
    model = FakeModel({"layer.0/n0": 0.01})
    decision = search_fallback([], model.evaluate, BUDGET, 16, baseline=model.evaluate(()))
    assert decision.budget_met and decision.chosen == 0 and decision.fp32_nodes == ()
    assert decision.stop_reason == "budget met with every node quantized"


def test_search_gives_back_worst_groups_until_the_budget_holds():
    model = FakeModel({"pooler/n0": 0.02, "pooler/n1": 0.01, "layer.1/n0": 0.02, "layer.0/n1": 0.005})
    ranking = rank([sensitivity("layer.0", 0, 0.1), sensitivity("layer.1", 1, 0.2), sensitivity("pooler", 3, 0.9)])
    decision = search_fallback(ranking, model.evaluate, BUDGET, 16, baseline=model.evaluate(()),
                               refine_nodes=False)
    assert [s.action for s in decision.steps] == ["all quantized", "fp32 pooler", "fp32 layer.1",
                                                  "re-quantize pooler"]
    assert [s.within_budget for s in decision.steps] == [False, False, True, False]
    assert decision.budget_met and decision.chosen == 2 and decision.stop_reason == "budget met"
    assert decision.fp32_nodes == ("pooler/n0", "pooler/n1", "layer.1/n0", "layer.1/n1")
    assert decision.steps[2].to_dict()["fp32_groups"] == ["pooler", "layer.1"]
    assert decision.steps[2].to_dict()["fp32_nodes"] == 4


def test_search_drops_groups_that_turn_out_unnecessary():
    # The isolated ranking overstates layer.0 (ranked first); only the pooler really matters.
    model = FakeModel({"pooler/n0": 0.03, "pooler/n1": 0.03})
    ranking = [sensitivity("layer.0", 4, 0.9), sensitivity("pooler", 3, 0.8)]
    decision = search_fallback(ranking, model.evaluate, BUDGET, 16, baseline=model.evaluate(()),
                               refine_nodes=False)
    actions = [s.action for s in decision.steps]
    assert actions == ["all quantized", "fp32 layer.0", "fp32 pooler", "re-quantize layer.0"]
    assert decision.budget_met and decision.steps[decision.chosen].fp32_groups == ("pooler",)


def test_node_refinement_keeps_only_the_offending_nodes_of_a_group():
    model = FakeModel({"ffn/n1": 0.05})  # one bad node in a group of four
    ranking = [sensitivity("ffn", 5, 0.9, nodes=4), sensitivity("pooler", 0, 0.1)]
    decision = search_fallback(ranking, model.evaluate, BUDGET, 16, baseline=model.evaluate(()))
    assert decision.budget_met and decision.fp32_nodes == ("ffn/n1",)
    assert decision.steps[decision.chosen].fp32_groups == ("ffn (1/4 nodes)",)
    tried = [s.action for s in decision.steps[2:]]
    assert tried == ["re-quantize node ffn/n3", "re-quantize node ffn/n2", "re-quantize node ffn/n1",
                     "re-quantize node ffn/n0"]
    assert [s.within_budget for s in decision.steps[2:]] == [True, True, False, True]


def test_search_respects_max_fallback_nodes_and_keeps_the_best_candidate():
    model = FakeModel({"pooler/n0": 0.03, "layer.1/n0": 0.03})
    ranking = [sensitivity("pooler", 3, 0.9, nodes=1), sensitivity("layer.1", 2, 0.5, nodes=8)]
    decision = search_fallback(ranking, model.evaluate, BUDGET, max_nodes=4, baseline=model.evaluate(()))
    assert not decision.budget_met
    assert decision.stop_reason == "max_fallback_nodes=4 reached before the budget held"
    assert decision.fp32_nodes == ("pooler/n0",)  # best agreement among the tried candidates
    assert max(len(excluded) for excluded in model.calls) <= 4
