"""Open-loop runner: requests are sent on a schedule (constant or Poisson arrivals at a target rate), whatever
the server does, and each latency is measured from the request's *scheduled* send time.

A closed loop waits for an answer before sending the next request, so a stalled server also stalls the
client and the stall hides in a few slow samples (coordinated omission). Here the schedule is fixed up front:
when the server stalls, requests keep being due, each waits, and every one of them carries the wait in its
latency. When the generator itself cannot keep up (too few cores, or `max_in_flight` reached) the requests
go out late; that lag is measured per request (actual send minus scheduled send) and reported, and it is
inside the latency too, so falling behind can never make the server look faster.

A record belongs to the window its *scheduled* time falls in (its latency and errors count there); throughput
counts the successful responses *completed* inside the window (perf_analyzer's definition), so a server that
falls behind shows the rate it kept, with the rate actually sent beside it. Every level ends at the window's end
plus the drain timeout: requests still unanswered then become failed records with the time they had waited (they
are the stall, not noise), and requests due but never sent by then (the generator was that far behind) become
`not_sent` records. When the rate is not kept, `limits.diagnose` names the limit that was hit.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from engineforge.errors import ConfigError
from engineforge.progress import info
from engineforge.stats import percentiles

from .generate_records import progress_note
from .limits import diagnose
from .metrics import calculate_metrics
from .records import (
    DRAIN,
    ERR_NOT_SENT,
    ERR_TIMEOUT,
    MEASURE,
    WARMUP,
    RequestFn,
    RequestResult,
    call_request,
    clock,
)
from .results import LevelResult, level_summary
from .server_stats import window_breakdown

ARRIVALS = ("constant", "poisson")
# The generator "kept the rate" when it sent >= 97 % of the target inside the window and 99 % of requests left
# within this lag of their schedule (asyncio timers alone overshoot by ~1 ms; a busy 2-core machine by ~10).
MAX_P99_SEND_LAG_MS = 25.0


def schedule_offsets(rate: float, span_s: float, arrival: str = "constant", seed: int = 0) -> np.ndarray:
    """Send times (seconds from the start) of every request due in [0, span_s)."""
    if not rate > 0 or not span_s > 0:
        raise ConfigError(f"open loop needs rate > 0 and a duration > 0, got rate={rate}, span={span_s}")
    if arrival == "constant":
        return np.arange(math.ceil(rate * span_s)) / rate
    if arrival == "poisson":
        rng = np.random.default_rng(seed)
        gaps = rng.exponential(1.0 / rate, size=math.ceil(rate * span_s * 1.5) + 16)
        times = np.cumsum(gaps) - gaps[0]  # the first request goes out at 0
        return times[times < span_s]
    raise ConfigError(f"arrival {arrival!r}: use one of {', '.join(ARRIVALS)}")


def schedule_stats(records: list[RequestResult], rate: float, window_s: float, window_end: float, *,
                   max_in_flight: int | None = None, processes: int = 1) -> dict[str, Any]:
    """How well the generator kept the schedule (pure): the rate it actually sent at inside the window (every send
    whose time falls in it, whenever it was due), each measured request's send lag (actual minus scheduled send),
    and the share of the window the senders spent waiting for a free in-flight slot."""
    measured = [r for r in records if r.phase == MEASURE and r.scheduled_s is not None]
    lags = np.array([max(r.start_s - r.scheduled_s, 0.0) for r in measured]) * 1000.0
    window_start = window_end - window_s
    sends = [r for r in records if r.scheduled_s is not None and r.error_kind != ERR_NOT_SENT
             and window_start <= r.start_s < window_end]
    sent_rps = len(sends) / window_s if window_s > 0 else 0.0
    p50, p99 = percentiles(lags, (50, 99)) if len(lags) else (0.0, 0.0)
    # Against what was scheduled in the window (Poisson arrivals scatter around the target by themselves).
    on_time = (sum(r.start_s < window_end and r.error_kind != ERR_NOT_SENT for r in measured) / len(measured)
               if measured else 1.0)
    kept = on_time >= 0.97 and p99 <= MAX_P99_SEND_LAG_MS
    cap_wait = sum(r.slot_wait_s for r in sends) / (window_s * max(processes, 1)) if window_s > 0 else 0.0
    return {"target_rps": rate, "scheduled": len(measured), "window_s": window_s,
            "scheduled_rps": round(len(measured) / window_s, 2) if window_s > 0 else 0.0,
            "sent_rps": round(sent_rps, 2), "sent_in_window": len(sends), "on_time": round(on_time, 4),
            "send_lag_p50_ms": round(p50, 3),
            "send_lag_p99_ms": round(p99, 3), "send_lag_max_ms": round(float(lags.max()), 3) if len(lags) else 0.0,
            "not_sent": sum(r.error_kind == ERR_NOT_SENT for r in measured),
            "max_in_flight": max_in_flight, "cap_wait_share": round(min(cap_wait, 1.0), 4), "kept_rate": bool(kept)}


def add_diagnosis(level: LevelResult) -> LevelResult:
    """Name the limit an open-loop level hit (limits.diagnose) in its schedule: `limit`, `shortfall`, `evidence`."""
    if level.schedule is not None:
        level.schedule |= diagnose(level.schedule, level.metrics.throughput_rps, level.client_cpu_percent,
                                   level.workers, level.server, level.records)
    return level


async def run_rate_level(
    request_fn: RequestFn,
    rate: float,
    duration_s: float,
    warmup_s: float = 0.0,
    *,
    arrival: str = "constant",
    seed: int = 0,
    max_in_flight: int = 1024,
    drain_timeout_s: float = 5.0,
    log: Callable[[str], None] = info,
    probe: Any = None,
    start_at: float | None = None,
    shift_s: float = 0.0,
    progress_every_s: float = 5.0,
) -> LevelResult:
    """Send at `rate` req/s for warm-up + duration; see module docstring (`probe`: as for `run_level`).

    Worker processes (loadtest/workers.py) share one schedule: each starts at the same `start_at` (a `clock()`
    time; the clock is system-wide) and sends its share of the rate, shifted by `shift_s` so that constant
    arrivals of all of them interleave evenly."""
    if max_in_flight < 1 or warmup_s < 0:
        raise ConfigError(f"bad open-loop level: max_in_flight={max_in_flight}, warmup={warmup_s}")
    span = warmup_s + duration_s
    offsets = schedule_offsets(rate, span, arrival, seed) + shift_s
    loop = _OpenLoop(request_fn, offsets[offsets < span], max_in_flight,
                     start_at if start_at is not None else clock() + 0.005, warmup_s, duration_s, drain_timeout_s)
    log(f"rate {rate:g} req/s ({arrival}): warm-up {warmup_s:g}s, then measuring {duration_s:g}s")
    cpu_start = time.process_time()
    server_view = asyncio.create_task(window_breakdown(probe, loop.warm_end, loop.window_end))
    reporter = asyncio.create_task(_report_progress(rate, loop, duration_s, progress_every_s, log))
    try:
        unsent = await loop.send_all()
        stalled, cancelled = await loop.wait_for_answers()
        server = await server_view
    finally:
        for task in [*loop.in_flight, server_view, reporter]:
            task.cancel()
    cpu_used = time.process_time() - cpu_start
    now = clock()
    loop.record_unanswered(stalled, unsent, now)
    records = loop.records
    metrics = calculate_metrics(records, duration_s, from_schedule=True)
    schedule = schedule_stats(records, rate, duration_s, loop.window_end, max_in_flight=max_in_flight)
    level = LevelResult(concurrency=0, window_s=duration_s, metrics=metrics, records=records,
                        warmup_requests=sum(r.phase == WARMUP for r in records),
                        drained_requests=sum(r.phase == DRAIN for r in records), cancelled_requests=cancelled,
                        client_cpu_percent=100.0 * cpu_used / max(now - loop.t0, 1e-9), rate=rate,
                        schedule=schedule | {"arrival": arrival}, server=server)
    add_diagnosis(level)
    log(f"rate {rate:g} req/s (latency from the scheduled send): {level_summary(level)}")
    return level


class _OpenLoop:
    """One level's schedule and what its sends share: the records, the in-flight slots and the requests in flight
    (task -> (request id, scheduled send, actual send))."""

    def __init__(self, request_fn: RequestFn, offsets: np.ndarray, max_in_flight: int, t0: float, warmup_s: float,
                 duration_s: float, drain_timeout_s: float) -> None:
        self.request_fn, self.offsets, self.t0 = request_fn, offsets, t0
        self.records: list[RequestResult] = []
        self.slots = asyncio.Semaphore(max_in_flight)
        self.in_flight: dict[asyncio.Task, tuple[int, float, float]] = {}
        self.sent = 0
        self.warm_end, self.window_end = t0 + warmup_s, t0 + warmup_s + duration_s
        self.deadline = self.window_end + drain_timeout_s  # nothing is sent or awaited after it: every level ends

    def phase_of(self, t: float) -> str:
        return WARMUP if t < self.warm_end else MEASURE if t < self.window_end else DRAIN

    async def send_all(self) -> list[tuple[int, float]]:
        """Send every request at its scheduled time; returns those never sent (request id, scheduled send) because
        the level's time ran out first."""
        for n, offset in enumerate(self.offsets):
            scheduled = self.t0 + float(offset)
            delay = scheduled - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            # at the cap, waiting here is send lag, and in the latency
            waited = await _free_slot(self.slots, self.deadline) if clock() < self.deadline else None
            if waited is None:  # the level's time ran out with this and later requests still unsent
                return [(m, self.t0 + float(o)) for m, o in enumerate(self.offsets[n:], start=n)]
            task = asyncio.create_task(self._send(n, scheduled, waited))
            self.sent += 1
            self.in_flight[task] = (n, scheduled, clock())
            task.add_done_callback(self.in_flight.pop)
        return []

    async def _send(self, n: int, scheduled: float, slot_wait: float) -> None:
        try:
            result = await call_request(self.request_fn, n)
        finally:
            self.slots.release()
        self.records.append(replace(result, phase=self.phase_of(scheduled), completed_phase=self.phase_of(result.end_s),
                                    seq=n, scheduled_s=scheduled, slot_wait_s=slot_wait))

    async def wait_for_answers(self) -> tuple[list[tuple[int, float, float]], int]:
        """Wait for the requests in flight until the deadline; returns the unanswered ones and how many they are."""
        pending: set[asyncio.Task] = set()
        if self.in_flight:
            _, pending = await asyncio.wait(list(self.in_flight), timeout=max(self.deadline - clock(), 0.0))
        return [self.in_flight[task] for task in pending if task in self.in_flight], len(pending)

    def record_unanswered(self, stalled: list[tuple[int, float, float]], unsent: list[tuple[int, float]],
                          now: float) -> None:
        """Failed records for requests unanswered at the deadline (they waited at least this long: they are the
        stall, not noise) and for those never sent."""
        for n, scheduled, sent_at in stalled:
            self.records.append(RequestResult(
                start_s=sent_at, latency_s=now - sent_at, ok=False, seq=n,
                error=f"no answer {now - scheduled:.1f}s after its scheduled send", error_kind=ERR_TIMEOUT,
                phase=self.phase_of(scheduled), scheduled_s=scheduled, completed_phase=DRAIN))
        for n, scheduled in unsent:
            self.records.append(RequestResult(
                start_s=now, latency_s=0.0, ok=False, seq=n, error_kind=ERR_NOT_SENT,
                error=f"never sent: the generator was {now - scheduled:.1f}s behind its schedule when the level's "
                "time ran out", phase=self.phase_of(scheduled), scheduled_s=scheduled, completed_phase=DRAIN))


async def _free_slot(slots: asyncio.Semaphore, deadline: float) -> float | None:
    """Take an in-flight slot; the seconds waited for it (0.0 when one was free), None if none freed by `deadline`."""
    if not slots.locked():
        await slots.acquire()
        return 0.0
    before = clock()
    try:
        await asyncio.wait_for(slots.acquire(), timeout=max(deadline - before, 0.0))
    except TimeoutError:
        return None
    return clock() - before


async def _report_progress(rate: float, loop: _OpenLoop, duration_s: float, every_s: float,
                           log: Callable[[str], None]) -> None:
    """A line every `every_s`: window progress, requests sent and answered, errors, and how late sends run."""
    if every_s <= 0:
        return
    while True:
        await asyncio.sleep(every_s)
        now = clock()
        if now < loop.warm_end:
            log(f"rate {rate:g} req/s: warming up, {loop.sent} sent")
            continue
        measured = [r for r in loop.records if r.phase == MEASURE]
        errors = sum(not r.ok for r in measured)
        recent = [r.start_s - r.scheduled_s for r in measured[-200:] if r.scheduled_s is not None]
        lag = 1000 * max(recent) if recent else 0.0
        log(f"rate {rate:g} req/s: {min(now - loop.warm_end, duration_s):.0f}/{duration_s:g}s, {loop.sent} sent, "
            f"{len(measured)} answered in the window, {errors} errors, recent send lag up to {lag:.1f} ms"
            + progress_note(loop.records, min(now - loop.warm_end, duration_s)))  # generate mode: tokens too
