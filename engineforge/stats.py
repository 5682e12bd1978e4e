"""The one percentile definition engineforge reports with (load tests and engine timings alike).

numpy's "linear" method (type 7 of Hyndman & Fan): the p-th percentile interpolates between the two
nearest ranks, so p50 of [1, 2, 3, 4] is 2.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentiles(values: Sequence[float], ps: Sequence[float]) -> list[float]:
    if len(values) == 0:
        raise ValueError("percentiles of an empty sample are undefined")
    return [float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), list(ps), method="linear")]
