"""The one percentile story: engine timing and benchmarks interpolate (engineforge.stats), load tests read an HDR
histogram (loadtest/histogram.py); these tests pin exactly how the two relate (stats.py's docstring)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from engineforge.loadtest.histogram import percentiles_ms
from engineforge.stats import median, percentiles

LOAD_TEST_POINTS = (50, 90, 95, 99, 99.9)  # every percentile a load-test report carries
HDR_PRECISION = 1 / 1024  # 3 significant digits: 2048 sub-buckets, a value at most this much high


def test_median_is_the_interpolated_p50_and_the_textbook_median():
    for values in ([3.0, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [5.0]):
        assert median(values) == percentiles(values, (50,))[0] == statistics.median(values)
    assert percentiles([1.0, 2.0, 3.0, 4.0], (50,)) == [2.5]
    with pytest.raises(ValueError, match="empty"):
        median([])


def test_hdr_p50_of_four_samples_is_a_sample_not_an_interpolation():
    assert percentiles_ms([0.001, 0.002, 0.003, 0.004], (50,)) == [2.0]  # stats.percentiles says 2.5


@pytest.mark.parametrize("n", [1, 2, 4, 7, 100, 1001, 20_000])
def test_hdr_percentiles_are_one_of_the_two_samples_the_interpolation_lies_between(n):
    rng = np.random.default_rng(n)
    latencies_s = rng.lognormal(mean=math.log(0.004), sigma=0.7, size=n)  # ~4 ms, a tail to tens of ms
    recorded_ms = np.sort(np.clip(np.round(latencies_s * 1e6), 1, None)) / 1000  # HDR records whole µs
    hdr = percentiles_ms(latencies_s, LOAD_TEST_POINTS)
    linear = percentiles(recorded_ms, LOAD_TEST_POINTS)
    for p, from_hdr, interpolated in zip(LOAD_TEST_POINTS, hdr, linear, strict=True):
        sample = recorded_ms[min(max(int(p * n / 100 + 0.5), 1), n) - 1]  # hdrh's rank: round(n * p / 100)
        assert sample <= from_hdr <= sample * (1 + HDR_PRECISION), (p, sample, from_hdr)
        position = (n - 1) * p / 100  # where the interpolation sits among the sorted samples (0-based)
        low, high = recorded_ms[math.floor(position + 1e-9)], recorded_ms[math.ceil(position - 1e-9)]
        assert low <= sample <= high and low - 1e-9 <= interpolated <= high + 1e-9, (p, low, sample, interpolated)
        assert abs(from_hdr - interpolated) <= (high - low) + sample * HDR_PRECISION + 1e-9
