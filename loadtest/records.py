"""The one record every request produces, successful or not.

Request functions never raise: whatever happens becomes a `RequestResult`, and every number in a
report is computed from these records alone (see `metrics.calculate_metrics`). That keeps the
measurement loop dumb and lets later analyses (open-loop queueing delay, server-side breakdowns,
variant comparisons) re-use the raw records without re-running anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

# Where a record falls relative to the measurement window. Only MEASURE records enter metrics.
WARMUP = "warmup"  # completed before the measurement window opened
MEASURE = "measure"  # completed inside the measurement window
DRAIN = "drain"  # completed after the window closed (was in flight when it closed)

# Coarse error classes so reports can say "37 timeouts" instead of listing 37 messages.
ERR_TIMEOUT = "timeout"  # client deadline exceeded
ERR_UNAVAILABLE = "unavailable"  # connection refused / server went away
ERR_SERVER = "server_error"  # the server answered with an error status (bad input, model failure)
ERR_BAD_OUTPUT = "bad_output"  # the server answered OK but the outputs are missing or mis-shaped
ERR_CLIENT = "client_error"  # an exception on our side (including a request function that raised)
ERR_RELOADING = "model_reloading"  # the model was reloading (no version loaded) for the whole request deadline
ERR_NOT_READY = "not_ready"  # the model was missing or not ready (and not reloading)
ERR_NOT_SENT = "not_sent"  # open loop: due, but never sent before the level's time ran out (the generator was behind)

# One clock for every timestamp: monotonic, high resolution, comparable across coroutines.
clock = time.perf_counter


@dataclass(frozen=True, slots=True)
class RequestResult:
    """Outcome of one inference request (one gRPC call, possibly carrying a batch of items).

    start_s is `clock()` (monotonic seconds, arbitrary origin) taken just before the call was
    sent; latency_s is the client-observed round trip. Latency statistics only use ok records.
    """

    start_s: float
    latency_s: float
    ok: bool
    batch_size: int = 1
    error: str | None = None
    error_kind: str | None = None
    # What the server answered, for spot checks (e.g. the first predicted label of the batch).
    output: str | None = None
    # Set by the runner, not by request functions.
    phase: str = MEASURE
    concurrency: int | None = None
    worker_id: int | None = None
    seq: int | None = None  # per-level request sequence number (also the Triton request id)
    # Open-loop mode: when the request was *meant* to be sent. start_s - scheduled_s is the
    # client-side queueing delay that closed-loop tests hide (coordinated omission).
    scheduled_s: float | None = None
    # Correctness check (texts with expected labels): how many items of the batch got the expected label.
    # Counted apart from latency: a wrong answer is still a successful request.
    correct: int | None = None
    # gRPC status code of a failed call ("INVALID_ARGUMENT", "DEADLINE_EXCEEDED", ...); None when no call failed.
    status: str | None = None
    # Open loop: the phase its *completion* fell in (`phase` follows the scheduled send there); throughput counts
    # successful responses completed inside the window. None: the same as `phase` (closed loop phases by completion).
    completed_phase: str | None = None
    # Open loop: seconds the sender waited for a free in-flight slot before sending it (--max-in-flight reached).
    slot_wait_s: float = 0.0
    # Times the request was sent again because its model was reloading (the wait is in its latency).
    retries: int = 0

    @property
    def end_s(self) -> float:
        return self.start_s + self.latency_s

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def failure(start_s: float, error: str, kind: str, batch_size: int = 1, status: str | None = None) -> RequestResult:
    """An error record whose latency runs from `start_s` to now."""
    return RequestResult(
        start_s=start_s,
        latency_s=max(clock() - start_s, 0.0),
        ok=False,
        batch_size=batch_size,
        error=error,
        error_kind=kind,
        status=status,
    )


class RequestFn(Protocol):
    """What the runner drives: `await fn(seq)` sends one request and returns its record.

    `seq` numbers requests within a level; implementations use it to pick a payload (cycling
    through their texts) and as a request id. Implementations must not raise; the runner still
    guards against it and records a client_error.
    """

    def __call__(self, seq: int) -> Awaitable[RequestResult]: ...


async def call_request(request_fn: RequestFn, seq: int) -> RequestResult:
    """`await request_fn(seq)`, holding it to its contract: anything raised or returned that is not a record
    becomes a client-error record (cancellation still propagates: runners cancel stragglers)."""
    start = clock()
    try:
        result = await request_fn(seq)
        if not isinstance(result, RequestResult):
            raise TypeError(f"request function returned {type(result).__name__}, not RequestResult")
        return result
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return failure(start, f"request function raised {type(exc).__name__}: {exc}", ERR_CLIENT)
