"""Latency percentiles from an HDR histogram (the `hdrhistogram` package, `hdrh`): 1 µs to 1 h at 3 significant
digits, so p99.9 of a long run costs a few kB instead of every sample, and runs can be merged."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS = 1, 3_600_000_000, 3


def latency_histogram(latencies_s: Iterable[float]):  # -> hdrh.histogram.HdrHistogram
    from hdrh.histogram import HdrHistogram

    histogram = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
    for seconds in latencies_s:
        histogram.record_value(min(max(round(seconds * 1e6), LOWEST_US), HIGHEST_US))
    return histogram


def percentiles_ms(latencies_s: Sequence[float], points: Sequence[float]) -> list[float]:
    """The value at each percentile, in ms. HDR's definition: the recorded sample at 1-based rank round(n * p / 100)
    (at least 1), to 1 µs and 3 significant digits; engineforge/stats.py says exactly how it relates to the
    interpolated percentile engine timing and the benchmarks report."""
    histogram = latency_histogram(latencies_s)
    return [histogram.get_value_at_percentile(p) / 1000.0 for p in points]
