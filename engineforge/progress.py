"""Progress reporting for long work through `logging` ("engineforge" logger): one line per event on stderr,
so stdout stays machine-readable. Other programs embedding engineforge can re-route or silence it."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOGGER = logging.getLogger("engineforge")


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the moment (pytest and redirect_stderr swap it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


if not LOGGER.handlers:
    _handler = _CurrentStderr()
    _handler.setFormatter(logging.Formatter("[engineforge] %(message)s"))
    LOGGER.addHandler(_handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # the handler above is the console; a root handler would print lines twice


def info(message: str) -> None:
    LOGGER.info(message)


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
