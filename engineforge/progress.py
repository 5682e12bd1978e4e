"""Progress reporting for long work through `logging` ("engineforge" logger): one line per event on stderr,
so stdout stays machine-readable. Other programs embedding engineforge can re-route or silence it."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOGGER = logging.getLogger("engineforge")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


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
    torch) go to `path` instead of the console, which keeps to engineforge's own lines; `path` gets those too.
    Handlers a library installs while inside (transformers and torch add their stderr handlers when first
    imported, which a build does inside) are held back until the end, so they print nothing meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_PlainFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    swapped: dict[logging.Logger, list[logging.Handler]] = {}

    def redirect(logger: logging.Logger) -> None:
        if logger not in swapped:
            swapped[logger] = list(logger.handlers)
            logger.handlers = [handler]  # the root gets one too, so a library's basicConfig() prints nothing

    # Loggers that print to the console themselves (transformers installs its own stderr handler).
    redirect(logging.getLogger())
    for candidate in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(candidate, logging.Logger) and candidate.handlers and not _ours(candidate):
            redirect(candidate)
    original_add = logging.Logger.addHandler

    def add_handler(logger: logging.Logger, new: logging.Handler) -> None:
        if _ours(logger) or new is handler:
            original_add(logger, new)
            return
        redirect(logger)
        if new not in swapped[logger]:
            swapped[logger].append(new)  # attached when the block ends

    logging.Logger.addHandler = add_handler  # type: ignore[method-assign]
    LOGGER.addHandler(handler)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        logging.Logger.addHandler = original_add  # type: ignore[method-assign]
        LOGGER.removeHandler(handler)
        for logger, handlers in swapped.items():
            logger.handlers = handlers
        handler.close()


class _PlainFormatter(logging.Formatter):
    """Drops terminal colour codes (transformers bolds its LOAD REPORT title): a log file is read as text."""

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", super().format(record))


def _ours(logger: logging.Logger) -> bool:
    return logger.name == LOGGER.name or logger.name.startswith(LOGGER.name + ".")


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


def _duration(seconds: float) -> str:
    """As build_engine's time limit reads it: "40 s", "2.5 min", "18 min"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 600 else f"{seconds / 60:.0f} min"


class StepProgress:
    """`label done/total steps, R steps/s, T left` at most every `every_s` seconds and after the last step: a
    training loop reports between its per-epoch lines, which on a busy machine come minutes apart."""

    def __init__(self, label: str, total: int, every_s: float = 10.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.label, self.total, self.every_s, self.done = label, max(int(total), 1), every_s, 0
        self._clock = clock
        self._start = self._last = clock()

    def step(self, detail: str = "") -> None:
        """One step done; `detail` (e.g. "loss 0.41") ends the line when one is printed."""
        self.done += 1
        now = self._clock()
        if self.done < self.total and now - self._last < self.every_s:
            return
        self._last = now
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        left = max(self.total - self.done, 0) / rate
        info(f"{self.label} {self.done}/{self.total} steps, {rate:.2f} steps/s, {_duration(left)} left"
             + (f", {detail}" if detail else ""))
