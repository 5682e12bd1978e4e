"""plan_serving's rule for threads x instances: the layouts that fit the cores, and the choice among them."""

from __future__ import annotations

import pytest

from engineforge.build.steps.plan_serving.instances import Layout, choose_layout, layouts


def test_layouts_fill_the_cores_with_at_most_four_instances():
    assert layouts(2) == [Layout(2, 1), Layout(1, 2)]
    assert layouts(6) == [Layout(4, 1), Layout(3, 2), Layout(1, 4), Layout(1, 6)]
    assert layouts(1) == [Layout(1, 1)]


def _row(instances: int, threads: int, rps: float, p50: float) -> dict:
    return {"instances": instances, "intra_op_threads": threads, "requests_per_s": rps, "batch1_p50_ms": p50}


def test_most_throughput_among_layouts_close_to_the_best_batch1_latency():
    rows = [_row(2, 1, 320, 1.95), _row(1, 2, 250, 1.80)]
    chosen, why = choose_layout(rows, 0.10, 4)
    assert chosen is rows[0]  # 8 % slower alone, 28 % more throughput
    assert "320 req/s at 4 concurrent callers" in why and "within 10% of the best batch-1 p50 (1.80 ms)" in why
    assert "1 x 2: 250 req/s, 1.80 ms" in why


def test_a_layout_that_makes_lone_requests_much_slower_is_not_chosen():
    rows = [_row(2, 1, 400, 2.40), _row(1, 2, 250, 1.80)]
    chosen, _ = choose_layout(rows, 0.10, 4)
    assert chosen is rows[1]


@pytest.mark.parametrize(("per_batch", "keep", "max_batch"), [
    ({1: (6.0, 5.0), 4: (15.0, 15.5)}, True, 1),  # pays at batch 1 only: larger calls run unpadded
    ({1: (6.0, 5.0), 4: (15.0, 13.0)}, True, 0),  # pays at every size: every call padded
    ({1: (6.0, 5.9), 4: (15.0, 12.0)}, False, 0),  # not at batch 1: not kept at all
    ({1: (6.0, 5.0), 2: (9.0, 8.0), 4: (15.0, 15.0)}, True, 2),
])
def test_buckets_are_kept_for_the_batch_sizes_where_they_pay(per_batch, keep, max_batch):
    from engineforge.build.steps.plan_serving import bucket_decision

    gains, kept, up_to = bucket_decision(per_batch, 0.05)
    assert (kept, up_to) == (keep, max_batch)
    assert gains[1] == round(1 - per_batch[1][1] / per_batch[1][0], 4)
