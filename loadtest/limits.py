"""Which limit an open-loop level hit, from the evidence recorded for it (pure).

When a level falls short of its target rate there are three usual suspects, and each leaves its own trace:

- the generator's CPU: a process near a full core sends late (`client_cpu_percent` per process);
- the in-flight cap (`--max-in-flight`): the sender waited for a free slot (each record's `slot_wait_s`);
- the server: its queue grows (Triton's queue time per request far above its compute time, or without Triton's
  statistics a client-side service latency far above the fastest one), so its answers come back slower than
  requests go out: a full in-flight cap is then the server's doing, and a higher cap would only lengthen the queue.

Late sends with none of these (CPU to spare, slots free) mean the process did not get a core when it needed one
(the host's cores are shared with the server or other work). A level sent on time whose answers came back slower
than it sent is server-bound as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engineforge.stats import median

from .records import MEASURE, RequestResult

GENERATOR_CPU = "generator CPU"
IN_FLIGHT_CAP = "--max-in-flight"
SERVER = "server"
HOST = "host CPU"

# Each generator process at or above this much of a core: it, not the server, set the pace (also `--workers auto`).
GENERATOR_BOUND_CPU_PERCENT = 80.0
CAP_BOUND_SHARE = 0.05  # the sender spent >= 5 % of the window waiting for a free in-flight slot
QUEUE_OVER_COMPUTE = 2.0  # Triton's queue time per request above twice its compute time: the server is saturated
LATENCY_OVER_FASTEST = 5.0  # without statistics: median service latency above 5x the fastest one


def server_queue(rows: Sequence[Mapping[str, Any]] | None) -> dict[str, Any] | None:
    """The model with the longest queue in Triton's breakdown of the window: its queue and compute ms per request."""
    best = None
    for row in rows or ():
        if not row.get("requests") or row.get("queue_ms") is None:
            continue
        compute = sum(row.get(f"{stage}_ms") or 0.0 for stage in ("compute_input", "compute_infer", "compute_output"))
        if best is None or row["queue_ms"] > best["queue_ms"]:
            best = {"model": row["model"], "queue_ms": row["queue_ms"], "compute_ms": round(compute, 4)}
    return best


def service_latency_ratio(records: Sequence[RequestResult]) -> float | None:
    """Median over fastest client-observed service time (send to answer) of the window's successful requests."""
    service = np.array([r.latency_s for r in records if r.ok and r.phase == MEASURE])
    if len(service) < 5 or service.min() <= 0:
        return None
    return median(service) / float(service.min())


def diagnose(schedule: Mapping[str, Any], throughput_rps: float, client_cpu_percent: float | None, workers: int,
             server_rows: Sequence[Mapping[str, Any]] | None, records: Sequence[RequestResult]) -> dict[str, Any]:
    """{"limit": one of the names above or None, "shortfall": a sentence or None, "evidence": what decided}."""
    rate, sent = schedule["target_rps"], schedule["sent_rps"]
    cpu = (client_cpu_percent or 0.0) / max(workers, 1)
    queue = server_queue(server_rows)
    ratio = service_latency_ratio(records) if queue is None else None
    if queue is not None:
        saturated = queue["queue_ms"] > max(QUEUE_OVER_COMPUTE * queue["compute_ms"], 1.0)
    else:
        saturated = ratio is not None and ratio > LATENCY_OVER_FASTEST
    slack = 2.0 / schedule["window_s"]  # two responses' worth: small windows count in whole requests
    behind = throughput_rps < 0.97 * sent - slack
    evidence = {"cpu_percent_per_process": round(cpu, 1), "cap_wait_share": schedule.get("cap_wait_share", 0.0),
                "max_in_flight": schedule.get("max_in_flight"), "server_queue": queue,
                "service_latency_over_fastest": None if ratio is None else round(ratio, 2),
                "server_saturated": bool(saturated), "answered_rps": round(throughput_rps, 2), "sent_rps": sent}
    limit, text = None, None
    answered = (f"the server answered {throughput_rps:.1f} req/s of the {sent:.1f} req/s sent" if schedule["kept_rate"]
                else f"the server answered {throughput_rps:.1f} req/s of the {rate:g} req/s asked for")
    why = _queue_words(queue, ratio)
    if not schedule["kept_rate"]:
        if evidence["cap_wait_share"] >= CAP_BOUND_SHARE:
            cap = f"--max-in-flight {schedule.get('max_in_flight')}"
            waited = f"sends waited for a free slot {100 * evidence['cap_wait_share']:.0f} % of the window"
            if saturated:
                limit, text = SERVER, (f"the server was the limit, not the generator ({cpu:.0f} % CPU per process): "
                                       f"{answered}; {why}, so every in-flight slot ({cap}) held a waiting request "
                                       f"and {waited}. A higher cap would only lengthen the server's queue")
            else:
                needed = _in_flight_needed(rate, records)
                limit, text = IN_FLIGHT_CAP, (f"the in-flight cap was the limit ({cap}): {waited} while {why}; raise "
                                              f"--max-in-flight (rate x latency: about {needed} in flight needed)")
        elif cpu >= GENERATOR_BOUND_CPU_PERCENT:
            limit, text = GENERATOR_CPU, (f"the generator could not keep {rate:g} req/s: each of its {workers} "
                                          f"process(es) used {cpu:.0f} % of a core; more processes (--workers "
                                          f"{workers + 1}) can keep the rate if cores are free")
        else:
            limit, text = HOST, (f"sends ran late though each generator process used only {cpu:.0f} % of a core and "
                                 "in-flight slots were free: the process did not get a core when it needed one (the "
                                 "host's cores are shared, e.g. with the server); run the generator elsewhere")
        text += (f" (sent {sent:.1f} req/s, {100 * schedule['on_time']:.0f} % of scheduled sends inside the window, "
                 f"p99 send lag {schedule['send_lag_p99_ms']:.1f} ms; the lag is included in the latencies)")
    elif behind:
        limit, text = SERVER, (f"sent on time, but {answered} inside the window; {why}: the server was the limit, "
                               "and the rest waited in its queue (in the latencies) or failed")
    reloads = sum(r.retries > 0 for r in records if r.phase == MEASURE)
    evidence["reload_retried"] = reloads
    if text is not None and reloads:
        text += f"; {reloads} requests waited for a model reload"
    return {"limit": limit, "shortfall": text, "evidence": evidence}


def _in_flight_needed(rate: float, records: Sequence[RequestResult]) -> int | str:
    """Little's law: requests in flight at `rate` with the window's mean service time."""
    service = [r.latency_s for r in records if r.ok and r.phase == MEASURE]
    return round(rate * float(np.mean(service))) + 1 if service else "?"


def _queue_words(queue: Mapping[str, Any] | None, ratio: float | None) -> str:
    if queue is not None:
        return (f"requests queued {queue['queue_ms']:.1f} ms inside Triton ({queue['model']}) against "
                f"{queue['compute_ms']:.1f} ms of compute")
    if ratio is not None:
        return f"the median answer took {ratio:.1f}x the fastest one (no Triton statistics)"
    return "no Triton statistics"
