"""Progress reporting for long work through `logging` ("engineforge" logger): one line per event on stderr,
so stdout stays machine-readable. Other programs embedding engineforge can re-route or silence it."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def third_party_logs_to(path: Path) -> Iterator[None]:
    """While inside: Python warnings and other libraries' log records (ONNX Runtime's quantizer, transformers,
    torch) go to `path` instead of the console, which keeps to engineforge's own lines; `path` gets those too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    # Loggers that print to the console themselves (transformers installs its own stderr handler).
    swapped = {logging.getLogger(): list(logging.getLogger().handlers)}
    for name, candidate in logging.Logger.manager.loggerDict.items():
        if isinstance(candidate, logging.Logger) and name != LOGGER.name and candidate.handlers:
            swapped[candidate] = list(candidate.handlers)
    for logger in swapped:
        logger.handlers = [handler]  # the root gets one too, so a library's basicConfig() prints nothing
    LOGGER.addHandler(handler)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        LOGGER.removeHandler(handler)
        for logger, handlers in swapped.items():
            logger.handlers = handlers
        handler.close()


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
