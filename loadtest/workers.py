"""Several load-generator processes driving one level together (`--workers N`).

One Python process with asyncio gRPC spends a roughly fixed amount of CPU per request, so past some rate it
cannot keep the schedule (the open loop reports the send lag) and in a closed loop it becomes the bottleneck
itself. Worker processes split the load: an open-loop rate is divided between them (each sends rate/N; constant
arrivals are shifted so the merged schedule stays evenly spaced, Poisson streams use their own seeds, and N
Poisson streams at rate/N are one Poisson stream at rate), a closed-loop concurrency is divided as evenly as
possible. They all start on one `clock()` deadline (CLOCK_MONOTONIC is system-wide, so records from every
process share a time line), and the parent merges their records and computes every metric from them, exactly
as for one process. Workers are spawned (not forked: gRPC does not survive a fork) once per run and reused for
every level and window.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
from collections.abc import Callable
from typing import Any

from engineforge.errors import ConfigError
from engineforge.progress import info

from .closed_loop import run_level
from .config import LoadTestConfig
from .metrics import calculate_metrics
from .open_loop import add_diagnosis, run_rate_level, schedule_stats
from .records import RequestResult, clock
from .results import LevelResult, level_name
from .server_stats import window_breakdown

MAX_AUTO_WORKERS = 8  # --workers auto grows the pool up to the machine's cores, and no further than this
START_MARGIN_S = 0.25  # between sending a level to the workers and its first request
READY_TIMEOUT_S = 60.0  # a worker imports grpc and tritonclient before it is ready


def split_concurrency(concurrency: int, workers: int) -> list[int]:
    """Closed-loop shares, largest first, none empty: 5 over 2 workers -> [3, 2]; 2 over 4 -> [1, 1]."""
    used = min(concurrency, workers)
    return [concurrency // used + (k < concurrency % used) for k in range(used)]


def merge_parts(parts: list[LevelResult], *, duration_s: float, rate: float | None, concurrency: int,
                window_end: float, arrival: str = "constant", max_in_flight: int | None = None) -> LevelResult:
    """One level from the workers' parts (pure): records pooled (request ids made unique across processes), every
    metric recomputed from them, client CPU summed (it can exceed one core). Open loop: the limit it hit is named
    once Triton's view of the window is attached (open_loop.add_diagnosis)."""
    records: list[RequestResult] = []
    worker_base = 0
    for k, part in enumerate(parts):
        records += [dataclasses.replace(r, seq=None if r.seq is None else r.seq * len(parts) + k,
                                        worker_id=None if r.worker_id is None else r.worker_id + worker_base)
                    for r in part.records]
        worker_base += part.concurrency
    open_loop = rate is not None
    cpu = [p.client_cpu_percent for p in parts if p.client_cpu_percent is not None]
    schedule = None
    if open_loop:
        schedule = schedule_stats(records, rate, duration_s, window_end, max_in_flight=max_in_flight,
                                  processes=len(parts)) | {"arrival": arrival}
    return LevelResult(
        concurrency=0 if open_loop else concurrency, window_s=duration_s,
        metrics=calculate_metrics(records, duration_s, from_schedule=open_loop), records=records,
        warmup_requests=sum(p.warmup_requests for p in parts), drained_requests=sum(p.drained_requests for p in parts),
        cancelled_requests=sum(p.cancelled_requests for p in parts),
        client_cpu_percent=sum(cpu) if cpu else None, aborted=next((p.aborted for p in parts if p.aborted), None),
        rate=rate, schedule=schedule, workers=len(parts))


class Generators:
    """The processes driving the load: this one (`request_fn`), or a `WorkerPool`; `grow()` adds a process."""

    def __init__(self, config: LoadTestConfig, metadata: dict[str, Any] | None, request_fn: Any,
                 pool_factory: Callable[[int], Any] | None = None) -> None:
        self.config, self.request_fn = config, request_fn
        self._factory = pool_factory or (lambda n: WorkerPool(config, metadata, n).start())
        self.pool: Any = None
        self.size = max(config.workers, 1)
        self._max = min(os.cpu_count() or 1, MAX_AUTO_WORKERS)

    async def start(self) -> Generators:
        if self.size > 1 and self.pool is None:
            self.pool = await self._factory(self.size)
        return self

    async def grow(self) -> bool:
        """One more process (False when the machine has no core left for it)."""
        if self.size >= self._max:
            return False
        await self.close()
        self.size += 1
        self.pool = await self._factory(self.size)
        return True

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.close()


class WorkerPool:
    """`n` spawned generator processes, each with its own request function for `config` (see module docstring)."""

    def __init__(self, config: LoadTestConfig, metadata: dict[str, Any] | None, n: int) -> None:
        if n < 2:
            raise ConfigError(f"a worker pool needs at least 2 processes, got {n}")
        self.config, self.metadata, self.n = config, metadata, n
        self._conns: list[Any] = []
        self._procs: list[Any] = []

    async def start(self) -> WorkerPool:
        context = multiprocessing.get_context("spawn")
        for k in range(self.n):
            parent, child = context.Pipe()
            proc = context.Process(target=worker_main, args=(child, self.config, self.metadata, k),
                                   name=f"engineforge-loadtest-{k}", daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        await asyncio.gather(*(self._receive(k, READY_TIMEOUT_S) for k in range(self.n)))
        return self

    async def run_level(self, value: float, warmup_s: float, *, probe: Any = None,
                        log: Callable[[str], None] = info) -> LevelResult:
        """One level at rate `value` (open loop) or concurrency `value`, spread over the workers."""
        config = self.config
        open_loop = bool(config.rates)
        shares: list[float] = ([value / self.n] * self.n if open_loop else
                               [float(c) for c in split_concurrency(int(value), self.n)])
        start_at = clock() + START_MARGIN_S
        warm_end, window_end = start_at + warmup_s, start_at + warmup_s + config.duration_s
        what = level_name(open_loop, value)
        log(f"{what} over {len(shares)} worker processes: warm-up {warmup_s:g}s, then measuring {config.duration_s:g}s")
        for k, share in enumerate(shares):
            self._conns[k].send({"value": share, "warmup_s": warmup_s, "start_at": start_at,
                                 "shift_s": k / value if open_loop else 0.0, "seed": k,
                                 "max_in_flight": -(-config.max_in_flight // self.n)})
        server_view = asyncio.create_task(window_breakdown(probe, warm_end, window_end))
        ticker = asyncio.create_task(_tick(what, warm_end, config.duration_s, config.progress_every_s, log))
        limit = warmup_s + config.duration_s + config.drain_timeout_s + 30.0
        try:
            parts = await asyncio.gather(*(self._receive(k, limit) for k in range(len(shares))))
        finally:
            ticker.cancel()
        level = merge_parts(list(parts), duration_s=config.duration_s, rate=value if open_loop else None,
                            concurrency=int(value), window_end=window_end, arrival=config.arrival,
                            max_in_flight=config.max_in_flight)
        level.server = await server_view
        return add_diagnosis(level)

    async def _receive(self, k: int, timeout_s: float) -> Any:
        conn = self._conns[k]
        ready = await asyncio.to_thread(conn.poll, timeout_s)
        if not ready:
            raise ConfigError(f"load-generator process {k} gave no answer within {timeout_s:.0f}s")
        try:
            status, payload = conn.recv()
        except EOFError:
            raise ConfigError(f"load-generator process {k} died (exit code {self._procs[k].exitcode})") from None
        if status != "ok":
            raise ConfigError(f"load-generator process {k} failed: {payload}")
        return payload

    async def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            await asyncio.to_thread(proc.join, 5.0)
            if proc.is_alive():
                proc.kill()
        for conn in self._conns:
            conn.close()


async def _tick(what: str, warm_end: float, duration_s: float, every_s: float, log: Callable[[str], None]) -> None:
    """Progress while the workers run (their records arrive at the end of the level)."""
    while every_s > 0:
        await asyncio.sleep(every_s)
        now = clock()
        done = f"{min(now - warm_end, duration_s):.0f}/{duration_s:g}s"
        log(f"{what}: warming up" if now < warm_end else f"{what}: {done}")


def worker_main(conn: Any, config: LoadTestConfig, metadata: dict[str, Any] | None, index: int) -> None:
    """A worker process: build the request function once, then run each level it is sent until told to stop."""
    try:
        asyncio.run(_serve(conn, config, metadata, index))
    except KeyboardInterrupt:  # the parent handles Ctrl-C and stops the pool
        pass


async def _serve(conn: Any, config: LoadTestConfig, metadata: dict[str, Any] | None, index: int = 0) -> None:
    from .request_factory import build_request_fn

    try:
        request_fn = build_request_fn(config, metadata, worker=index)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", None))
    quiet = lambda _message: None  # noqa: E731  (the parent reports for all workers)
    try:
        while True:
            task = await asyncio.to_thread(conn.recv)
            if task is None:
                return
            try:
                if config.rates:
                    part = await run_rate_level(request_fn, task["value"], config.duration_s, task["warmup_s"],
                                                arrival=config.arrival, seed=task["seed"],
                                                max_in_flight=task["max_in_flight"],
                                                drain_timeout_s=config.drain_timeout_s, log=quiet, progress_every_s=0,
                                                start_at=task["start_at"], shift_s=task["shift_s"])
                else:
                    part = await run_level(request_fn, int(task["value"]), config.duration_s, task["warmup_s"],
                                           drain_timeout_s=config.drain_timeout_s, progress_every_s=0,
                                           max_consecutive_errors=config.max_consecutive_errors, log=quiet,
                                           start_at=task["start_at"])
                conn.send(("ok", part))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        await request_fn.aclose()
