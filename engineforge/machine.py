"""Facts about the machine this process runs on, shared by the build (which measures on it) and serving."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (the container's CPU set, not the host's), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)
