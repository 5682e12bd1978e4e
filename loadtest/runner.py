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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from engineforge.errors import ConfigError
from engineforge.progress import info

from .config import LoadTestConfig
from .limits import GENERATOR_BOUND_CPU_PERCENT, GENERATOR_CPU
from .metrics import LoadMetrics, calculate_metrics
from .records import DRAIN, MEASURE, WARMUP, RequestFn, RequestResult, call_request, clock
from .server_stats import StatsProbe, window_breakdown


@dataclass
class LevelResult:
    """One concurrency level: its metrics and every raw record (all phases, tagged)."""

    concurrency: int
    window_s: float  # measurement window actually covered (shorter only if aborted)
    metrics: LoadMetrics
    records: list[RequestResult] = field(repr=False)
    warmup_requests: int = 0
    drained_requests: int = 0  # completed after the window closed (not in metrics)
    cancelled_requests: int = 0  # still in flight after the drain timeout (not in metrics)
    # CPU used by this process over the window, in % of one core. Near 100 % means the load
    # generator, not the server, may be the bottleneck.
    client_cpu_percent: float | None = None
    aborted: str | None = None
    # Open loop (loadtest/open_loop.py): the target rate and how well the generator kept its schedule.
    rate: float | None = None
    schedule: dict[str, Any] | None = None
    # Triton's own view of the window, per model (loadtest/server_stats.py); None without statistics.
    server: list[dict[str, Any]] | None = None
    # Stability windows (loadtest/stability.py): stable or not, windows measured, per-window figures.
    stability: dict[str, Any] | None = None
    workers: int = 1  # generator processes that drove the level (loadtest/workers.py)

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "rate": self.rate,
            "schedule": self.schedule,
            "server": self.server,
            "stability": self.stability,
            "workers": self.workers,
            "window_s": self.window_s,
            "metrics": self.metrics.to_dict(),
            "warmup_requests": self.warmup_requests,
            "drained_requests": self.drained_requests,
            "cancelled_requests": self.cancelled_requests,
            "client_cpu_percent": self.client_cpu_percent,
            "aborted": self.aborted,
        }


@dataclass
class LoadTestResult:
    config: LoadTestConfig
    levels: list[LevelResult]
    started_at: str  # ISO 8601 UTC
    finished_at: str
    model_metadata: dict[str, Any] | None = None
    slo: dict[str, Any] | None = None  # `--slo`'s verdict (loadtest/slo.verdict), stored in every report

    @property
    def failed(self) -> bool:
        """True when a level was aborted or had no successful request at all."""
        return any(lv.aborted or lv.metrics.completed == 0 for lv in self.levels)


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
    records: list[RequestResult] = []
    stop = asyncio.Event()
    abort_reason: list[str] = []
    consecutive_errors = 0
    seq = itertools.count()
    t0 = clock()
    warm_end, window_end = t0 + warmup_s, t0 + warmup_s + duration_s

    async def worker(worker_id: int) -> None:
        nonlocal consecutive_errors
        while not stop.is_set() and clock() < window_end:
            n = next(seq)
            result = await call_request(request_fn, n)
            end = clock()
            phase = WARMUP if end < warm_end else MEASURE if end <= window_end else DRAIN
            records.append(replace(result, phase=phase, concurrency=concurrency, worker_id=worker_id, seq=n))
            consecutive_errors = 0 if result.ok else consecutive_errors + 1
            if max_consecutive_errors and consecutive_errors >= max_consecutive_errors and not stop.is_set():
                abort_reason.append(
                    f"aborted after {consecutive_errors} consecutive failed requests; last error: {result.error}"
                )
                stop.set()

    log(f"concurrency {concurrency}: warm-up {warmup_s:g}s, then measuring {duration_s:g}s")
    workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    reporter = asyncio.create_task(_report_progress(records, concurrency, warm_end, duration_s, progress_every_s, log))
    server_view = asyncio.create_task(window_breakdown(probe, warm_end, window_end))
    try:
        await _wait_until(stop, warm_end)
        cpu_start, window_start = time.process_time(), clock()
        await _wait_until(stop, window_end)
        window_stop = min(clock(), window_end)
        cpu_used = time.process_time() - cpu_start
        stop.set()
        _, pending = await asyncio.wait(workers, timeout=drain_timeout_s)
        server = await server_view if not abort_reason else None
    finally:  # also on cancellation of the whole run: never leave workers behind
        stop.set()
        for task in [*workers, reporter, server_view]:
            task.cancel()
        outcomes = await asyncio.gather(*workers, reporter, return_exceptions=True)
        await asyncio.gather(server_view, return_exceptions=True)
    for outcome in outcomes:  # a worker can only fail through a bug in this module: surface it
        if isinstance(outcome, Exception):
            raise outcome

    window_s = max(window_stop - max(window_start, warm_end), 0.0)
    if not abort_reason:
        window_s = duration_s  # deadlines classify records exactly; ignore ms of wake-up jitter
    metrics = calculate_metrics(records, max(window_s, 1e-9))
    level = LevelResult(
        concurrency=concurrency,
        window_s=window_s,
        metrics=metrics,
        records=records,
        warmup_requests=sum(r.phase == WARMUP for r in records),
        drained_requests=sum(r.phase == DRAIN for r in records),
        cancelled_requests=len(pending),
        client_cpu_percent=100.0 * cpu_used / window_s if window_s > 0 else None,
        aborted=abort_reason[0] if abort_reason else None,
        server=server,
    )
    log(f"concurrency {concurrency}: {level_summary(level)}")
    return level


def run_loadtest(config: LoadTestConfig, request_fn: RequestFn | None = None) -> LoadTestResult:
    """Check the server, then run every level of `config` against it. Blocking; bounded in time.

    With `request_fn` given (tests, custom payloads) the server check is skipped and the function
    is used as is. Raises ServerUnavailableError / ModelNotReadyError / ConfigError before any load.
    """
    return asyncio.run(run_loadtest_async(config, request_fn))


async def run_loadtest_async(config: LoadTestConfig, request_fn: RequestFn | None = None) -> LoadTestResult:
    started_at = _utc_now()
    metadata = None
    owned = None
    probe = None
    if request_fn is None:
        from . import triton_requests  # heavy (grpc); only when talking to Triton
        from .server_check import check_server

        metadata = await check_server(config.channel(), config.model)
        request_fn = owned = triton_requests.build_request_fn(config, metadata)
        probe = await StatsProbe.open(config.channel(), config.model)
    elif config.workers != 1:
        raise ConfigError("worker processes build their own Triton request functions; a custom request function "
                          "runs in this process only (workers=1)")
    levels_text = (f"open loop at {','.join(f'{r:g}' for r in config.rates)} req/s ({config.arrival})"
                   if config.rates else f"concurrency {','.join(map(str, config.concurrency))}")
    processes = {0: ", generator processes: auto", 1: ""}.get(config.workers, f", {config.workers} generator processes")
    info(
        f"load test of {config.model!r} at {config.url} ({config.mode} mode, batch {config.batch_size}): "
        f"{levels_text}, ~{config.estimated_runtime_s:g}s{processes}"
    )
    from .workers import Generators

    generators = Generators(config, metadata, request_fn)
    try:
        await generators.start()
        measure = _level_measurer(config, probe, generators)
        if config.stability_windows:
            levels = await _stable_levels(config, measure)
        else:
            levels = []
            for value in config.rates or config.concurrency:
                levels.append(await measure(value, config.warmup_s, False))
                if levels[-1].aborted:
                    info(f"skipping the remaining levels: {levels[-1].aborted}")
                    break
    finally:
        await generators.close()
        if owned is not None:
            await owned.aclose()
        if probe is not None:
            await probe.close()
    return LoadTestResult(config, levels, started_at, _utc_now(), metadata)


MeasureFn = Callable[[float, float, bool], Awaitable[LevelResult]]


def _level_measurer(config: LoadTestConfig, probe: Any, generators: Any) -> MeasureFn:
    """`await measure(value, warmup_s, quiet)`: one window at rate or concurrency `value`, in this process or
    spread over worker processes; with `--workers auto` a level the generator itself limited is measured again
    with one more process, while cores remain (loadtest/workers.py)."""
    async def measure(value: float, warmup_s: float, quiet: bool) -> LevelResult:
        what = level_name(bool(config.rates), value)
        level = await _measure_once(config, generators, value, warmup_s, probe, quiet)
        while config.workers == 0 and generator_bound(level) and await generators.grow():
            info(f"{what}: the generator was the limit ({level.client_cpu_percent:.0f} % CPU over "
                 f"{level.workers} process(es)); measuring again with {generators.size} processes")
            level = await _measure_once(config, generators, value, warmup_s, probe, quiet)
        return level
    return measure


async def _measure_once(config: LoadTestConfig, generators: Any, value: float, warmup_s: float, probe: Any,
                        quiet: bool) -> LevelResult:
    log = (lambda _m: None) if quiet else info
    progress_every_s = 0 if quiet else config.progress_every_s
    if generators.pool is not None:
        level = await generators.pool.run_level(value, warmup_s, probe=probe, log=log)
        log(f"{level_name(bool(config.rates), value)}: {level_summary(level)}")
        return level
    if config.rates:
        from .open_loop import run_rate_level

        return await run_rate_level(generators.request_fn, value, config.duration_s, warmup_s, arrival=config.arrival,
                                    max_in_flight=config.max_in_flight, drain_timeout_s=config.drain_timeout_s,
                                    probe=probe, log=log, progress_every_s=progress_every_s)
    return await run_level(generators.request_fn, int(value), config.duration_s, warmup_s,
                           drain_timeout_s=config.drain_timeout_s, progress_every_s=progress_every_s,
                           max_consecutive_errors=config.max_consecutive_errors, probe=probe, log=log)


async def _stable_levels(config: LoadTestConfig, measure: MeasureFn) -> list[LevelResult]:
    """Each level measured window after window until stable (config.stability_windows at most)."""
    from .stability import run_until_stable

    levels = []
    for value in config.rates or config.concurrency:
        what = level_name(bool(config.rates), value)
        level = await run_until_stable(lambda first, v=value: measure(v, config.warmup_s if first else 0.0, True),
                                       config.stability_windows, config.stability_tolerance,
                                       log=lambda m, w=what: info(f"{w}: {m}"))
        info(f"{what}: {level_summary(level)}")
        levels.append(level)
        if level.aborted:
            break
    return levels


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
            log(f"concurrency {concurrency}: {done}, {len(measured)} requests, {rps:.1f} req/s, {errors} errors")
        last_t, last_n = now, n


def level_name(open_loop: bool, value: float) -> str:
    """How progress lines name a level: "rate 200 req/s" or "concurrency 4"."""
    return f"rate {value:g} req/s" if open_loop else f"concurrency {int(value)}"


def generator_bound(level: LevelResult) -> bool:
    """Did the load generator, not the server, limit this level (pure)? Each process near a full core, and in open
    loop the rate not kept with no other limit named (loadtest/limits.py: a full in-flight cap or the server wins);
    a closed loop has no rate to keep: a busy generator there is the limit by itself. `--workers auto` then
    measures the level again with one more process."""
    per_process = (level.client_cpu_percent or 0.0) / max(level.workers, 1)
    if per_process < GENERATOR_BOUND_CPU_PERCENT:
        return False
    if level.schedule is None:
        return True
    return not level.schedule.get("kept_rate", True) and level.schedule.get("limit") in (None, GENERATOR_CPU)


def level_summary(level: LevelResult) -> str:
    m = level.metrics
    text = f"{m.completed} ok, {m.errors} errors, {m.throughput_rps:.1f} req/s"
    if level.schedule:
        text += f" answered (sent {level.schedule.get('sent_rps', 0.0):.1f} req/s)"
    if m.latency_p50_ms is not None:
        text += f", p50 {m.latency_p50_ms:.2f} ms, p99 {m.latency_p99_ms:.2f} ms, max {m.latency_max_ms:.2f} ms"
    if level.aborted:
        text += f" — {level.aborted}"
    if level.schedule and level.schedule.get("shortfall"):
        text += f" — limit: {level.schedule.get('limit')}: {level.schedule['shortfall']}"
    return text


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
