"""Progress reporting for long work: one line per event on stderr, so stdout stays machine-readable."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def info(message: str) -> None:
    print(f"[engineforge] {message}", file=sys.stderr, flush=True)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Announce a stage, then report how long it took (or that it failed)."""
    info(f"{name} ...")
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        info(f"{name} failed after {time.perf_counter() - start:.1f}s")
        raise
    info(f"{name} done in {time.perf_counter() - start:.1f}s")


def counter(label: str, done: int, total: int, every: int = 1) -> None:
    """Print `label done/total` every `every` items and at the end."""
    if done == total or done % max(every, 1) == 0:
        info(f"{label} {done}/{total}")
