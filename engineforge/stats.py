"""The percentile engineforge reports with, and exactly how the load tests' HDR percentiles relate to it.

`percentiles` is numpy's "linear" method (type 7 of Hyndman & Fan): the p-th percentile of n sorted samples sits
at 0-based position h = (n - 1) * p / 100 and interpolates between the samples at floor(h) and ceil(h), so p50 of
[1, 2, 3, 4] is 2.5 and `median` is the textbook median (statistics.median, np.median). Engine timing
(engines/timing.py), the benchmarks and the open loop's send lag use it: small samples (tens to thousands of
timed calls) where interpolating is the steadier estimate.

Load-test latencies (loadtest/histogram.py) come from an HDR histogram instead (as in HdrHistogram-based tools such
as wrk2): a level's p99.9 over many thousands of requests, every one an observed latency. HDR picks one recorded
sample, the one at 1-based rank round(n * p / 100) (half up, at least 1), and returns it to its precision (whole
microseconds, 3 significant digits: up to 2 047 µs exact, above that at most 0.1 % high). For p >= 50, every
percentile a load test reports, that sample is one of the two `percentiles` interpolates between, so the two
definitions differ by at most the gap between those two neighbouring samples plus HDR's precision (p50 of
[1, 2, 3, 4] ms: HDR 2 ms, `percentiles` 2.5 ms); over the thousands of samples of a load-test level that gap is
small wherever samples are dense.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentiles(values: Sequence[float], ps: Sequence[float]) -> list[float]:
    """The `ps` percentiles (0..100) of `values`, interpolated between the two nearest ranks (see module docstring)."""
    if len(values) == 0:
        raise ValueError("percentiles of an empty sample are undefined")
    return [float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), list(ps), method="linear")]


def median(values: Sequence[float]) -> float:
    """p50 of `percentiles`: the mean of the two middle values for an even count."""
    return percentiles(values, (50,))[0]

