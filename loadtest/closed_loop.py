"""Closed-loop runner: N workers each send a request, wait for it, and send the next.

Time line of one concurrency level (all deadlines fixed up front, so a run always ends):

    |-- warm-up --|------ measurement window ------|-- drain (<= drain_timeout_s) --|

A record's phase is decided by when it *completes*: before the window -> warmup, inside ->
measure, after -> drain. Counting completions inside a fixed window gives an unbiased
throughput for a steady closed loop. No request is started after the window closes; requests
still in flight then are awaited up to drain_timeout_s, then cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from engineforge.errors import ConfigError
from engineforge.progress import info

from .generate_records import progress_note
from .metrics import calculate_metrics
from .records import DRAIN, MEASURE, WARMUP, RequestFn, RequestResult, call_request, clock
from .results import LevelResult, level_summary
from .server_stats import window_breakdown


async def run_level(
    request_fn: RequestFn,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.0,
    *,
    drain_timeout_s: float = 5.0,
    progress_every_s: float = 5.0,
    max_consecutive_errors: int | None = None,
    log: Callable[[str], None] = info,
    probe: Any = None,
    start_at: float | None = None,
) -> LevelResult:
    """Drive `request_fn` with `concurrency` closed-loop workers; see module docstring. With a
    `server_stats.StatsProbe`, Triton's per-model breakdown of the window is attached. `start_at` (a `clock()`
    time) lines up worker processes (loadtest/workers.py)."""
    if concurrency < 1 or not duration_s > 0 or warmup_s < 0:
        raise ConfigError(f"bad level: concurrency={concurrency}, duration={duration_s}, warmup={warmup_s}")
    if start_at is not None and start_at > clock():
        await asyncio.sleep(start_at - clock())
    loop = _ClosedLoop(request_fn, concurrency, warmup_s, duration_s, max_consecutive_errors)
    log(f"concurrency {concurrency}: warm-up {warmup_s:g}s, then measuring {duration_s:g}s")
    window = await loop.measure(drain_timeout_s, progress_every_s, probe, log)
    level = loop.level(window)
    log(f"concurrency {concurrency}: {level_summary(level)}")
    return level


@dataclass(frozen=True)
class _Window:
    """What one level's window was: its actual span (clock() times), the CPU this process used in it, the requests
    still in flight after the drain, and Triton's breakdown (None without statistics or after an abort)."""

    start: float
    stop: float
    cpu_s: float
    cancelled: int
    server: list[dict[str, Any]] | None


class _ClosedLoop:
    """One level's workers and what they share: the records, the stop signal and why the level was aborted."""

    def __init__(self, request_fn: RequestFn, concurrency: int, warmup_s: float, duration_s: float,
                 max_consecutive_errors: int | None) -> None:
        self.request_fn, self.concurrency, self.duration_s = request_fn, concurrency, duration_s
        self.max_consecutive_errors = max_consecutive_errors
        self.records: list[RequestResult] = []
        self.stop = asyncio.Event()
        self.abort_reason: str | None = None
        self._consecutive_errors = 0
        self._seq = itertools.count()
        t0 = clock()
        self.warm_end, self.window_end = t0 + warmup_s, t0 + warmup_s + duration_s

    async def worker(self, worker_id: int) -> None:
        while not self.stop.is_set() and clock() < self.window_end:
            n = next(self._seq)
            result = await call_request(self.request_fn, n)
            end = clock()
            phase = WARMUP if end < self.warm_end else MEASURE if end <= self.window_end else DRAIN
            self.records.append(replace(result, phase=phase, concurrency=self.concurrency, worker_id=worker_id, seq=n))
            self._count_failure(result)

    def _count_failure(self, result: RequestResult) -> None:
        """Abort the level after `max_consecutive_errors` failures in a row (a dead server fails instantly)."""
        self._consecutive_errors = 0 if result.ok else self._consecutive_errors + 1
        if (self.max_consecutive_errors and self._consecutive_errors >= self.max_consecutive_errors
                and not self.stop.is_set()):
            self.abort_reason = (f"aborted after {self._consecutive_errors} consecutive failed requests; "
                                 f"last error: {result.error}")
            self.stop.set()

    async def measure(self, drain_timeout_s: float, progress_every_s: float, probe: Any,
                      log: Callable[[str], None]) -> _Window:
        """Run the workers through warm-up, window and drain; never leaves a task behind, even when cancelled."""
        workers = [asyncio.create_task(self.worker(i)) for i in range(self.concurrency)]
        reporter = asyncio.create_task(_report_progress(self.records, self.concurrency, self.warm_end,
                                                        self.duration_s, progress_every_s, log))
        server_view = asyncio.create_task(window_breakdown(probe, self.warm_end, self.window_end))
        try:
            await _wait_until(self.stop, self.warm_end)
            cpu_start, window_start = time.process_time(), clock()
            await _wait_until(self.stop, self.window_end)
            window_stop = min(clock(), self.window_end)
            cpu_used = time.process_time() - cpu_start
            self.stop.set()
            _, pending = await asyncio.wait(workers, timeout=drain_timeout_s)
            server = await server_view if self.abort_reason is None else None
        finally:  # also on cancellation of the whole run: never leave workers behind
            self.stop.set()
            for task in [*workers, reporter, server_view]:
                task.cancel()
            outcomes = await asyncio.gather(*workers, reporter, return_exceptions=True)
            await asyncio.gather(server_view, return_exceptions=True)
        for outcome in outcomes:  # a worker can only fail through a bug in this module: surface it
            if isinstance(outcome, Exception):
                raise outcome
        return _Window(window_start, window_stop, cpu_used, len(pending), server)

    def level(self, window: _Window) -> LevelResult:
        window_s = max(window.stop - max(window.start, self.warm_end), 0.0)
        if self.abort_reason is None:
            window_s = self.duration_s  # deadlines classify records exactly; ignore ms of wake-up jitter
        records = self.records
        return LevelResult(
            concurrency=self.concurrency,
            window_s=window_s,
            metrics=calculate_metrics(records, max(window_s, 1e-9)),
            records=records,
            warmup_requests=sum(r.phase == WARMUP for r in records),
            drained_requests=sum(r.phase == DRAIN for r in records),
            cancelled_requests=window.cancelled,
            client_cpu_percent=100.0 * window.cpu_s / window_s if window_s > 0 else None,
            aborted=self.abort_reason,
            server=window.server,
        )


async def _wait_until(stop: asyncio.Event, deadline: float) -> None:
    remaining = deadline - clock()
    if remaining > 0 and not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=remaining)
        except TimeoutError:
            pass


async def _report_progress(
    records: list[RequestResult],
    concurrency: int,
    warm_end: float,
    duration_s: float,
    every_s: float,
    log: Callable[[str], None],
) -> None:
    if every_s <= 0:
        return
    last_t, last_n = clock(), 0
    while True:
        await asyncio.sleep(every_s)
        now, n = clock(), len(records)
        rps = (n - last_n) / (now - last_t)  # over the last interval, whatever the phase
        if now < warm_end:
            log(f"concurrency {concurrency}: warming up, {n} requests, {rps:.1f} req/s")
        else:
            measured = [r for r in records if r.phase == MEASURE]
            errors = sum(not r.ok for r in measured)
            done = f"{min(now - warm_end, duration_s):.0f}/{duration_s:g}s"
            log(f"concurrency {concurrency}: {done}, {len(measured)} requests, {rps:.1f} req/s, {errors} errors"
                + progress_note(records, min(now - warm_end, duration_s)))  # generate mode: tokens too
        last_t, last_n = now, n
