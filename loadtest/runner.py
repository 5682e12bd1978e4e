"""Running a load test: check the server, open the request function and Triton's statistics reader (all through
the config's one gRPC channel, so TLS reaches every connection), then measure each level: closed loop
(loadtest/closed_loop.py) or open loop (loadtest/open_loop.py), in this process or spread over worker processes
(loadtest/workers.py), in one window or until stable (loadtest/stability.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from engineforge.errors import ConfigError
from engineforge.progress import info

from .closed_loop import run_level
from .config import LoadTestConfig
from .open_loop import run_rate_level
from .records import RequestFn
from .results import LevelResult, LoadTestResult, generator_bound, level_name, level_summary
from .server_stats import StatsProbe
from .stability import run_until_stable
from .workers import Generators


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
        from .request_factory import build_request_fn  # heavy (grpc); only when talking to Triton
        from .server_check import check_server

        metadata = await check_server(config.channel(), config.model)
        request_fn = owned = build_request_fn(config, metadata)
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
        return await run_rate_level(generators.request_fn, value, config.duration_s, warmup_s, arrival=config.arrival,
                                    max_in_flight=config.max_in_flight, drain_timeout_s=config.drain_timeout_s,
                                    probe=probe, log=log, progress_every_s=progress_every_s)
    return await run_level(generators.request_fn, int(value), config.duration_s, warmup_s,
                           drain_timeout_s=config.drain_timeout_s, progress_every_s=progress_every_s,
                           max_consecutive_errors=config.max_consecutive_errors, probe=probe, log=log)


async def _stable_levels(config: LoadTestConfig, measure: MeasureFn) -> list[LevelResult]:
    """Each level measured window after window until stable (config.stability_windows at most)."""
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


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
