"""Threads per instance and instances, measured in-process on the traffic profile.

Each configuration (instances x threads that fit the cores) is timed two ways: batch-1 latency (one caller,
lengths changing call to call), and throughput with `concurrency` callers. In Triton, callers beyond the
instances queue and the dynamic batcher merges them, so each instance runs batches of about
concurrency / instances requests; here each instance is a Python thread with its own engine running such batches
back to back (ONNX Runtime and OpenVINO release the GIL while they compute). Configurations take turns in short
rounds, so load from elsewhere on a shared machine hits them all alike.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engineforge.engines.timing import measure_profile_latencies, profile_feeds
from engineforge.engines.traffic import TrafficProfile

# As serving caps CPU instances (serve.serving_defaults.MAX_CPU_INSTANCES): each is a stub process with its own
# engine copy, and past a few memory grows while usual concurrency gains nothing.
MAX_INSTANCES = 4


@dataclass(frozen=True)
class Layout:
    instances: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.instances} x {self.threads}"


def layouts(cores: int) -> list[Layout]:
    """Threads 1, 2, 4, ... up to the cores (and the cores themselves), each with as many instances as fit."""
    threads = sorted({t for t in (2 ** k for k in range(8)) if t <= cores} | {cores})
    return [Layout(min(cores // t, MAX_INSTANCES), t) for t in threads]


def _throughput_round(engines: Sequence[Any], calls: Sequence[dict[str, Any]], batch: int, seconds: float) -> int:
    """Requests completed by one thread per engine, each running `calls` in turn for `seconds`."""
    done = [0] * len(engines)
    deadline = time.perf_counter() + seconds

    def work(index: int) -> None:
        k = index
        while time.perf_counter() < deadline:
            engines[index].run(calls[k % len(calls)])
            done[index] += batch
            k += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(engines))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done)


def measure_layouts(open_engine: Callable[[int], Any], profile: TrafficProfile, vocab_size: int, cores: int,
                    concurrency: int, seconds: float, calls: int = 40) -> list[dict[str, Any]]:
    """One row per layout: batch-1 p50/p99 (ms) and requests per second at `concurrency` callers.
    `open_engine(threads)` opens the engine as served."""
    found = layouts(cores)
    engines = {layout: [open_engine(layout.threads) for _ in range(layout.instances)] for layout in found}
    single = TrafficProfile(profile.source, profile.lengths, profile.max_sequence_length, profile.count, (1,))
    latency = measure_profile_latencies({layout.name: engines[layout][0] for layout in found}, vocab_size, single,
                                        calls=calls)
    rounds, served, spent = 3, dict.fromkeys(found, 0), dict.fromkeys(found, 0.0)
    batches = {layout: math.ceil(concurrency / layout.instances) for layout in found}
    feeds = {layout: profile_feeds(engines[layout][0].input_names, profile.draw(calls * batches[layout], 7),
                                   batches[layout], vocab_size) for layout in found}
    for layout in found:  # warm every instance at its batch size before the clock runs
        _throughput_round(engines[layout], feeds[layout], batches[layout], 0.05)
    for _ in range(rounds):
        for layout in found:
            time.sleep(0.05)
            began = time.perf_counter()
            served[layout] += _throughput_round(engines[layout], feeds[layout], batches[layout], seconds / rounds)
            spent[layout] += time.perf_counter() - began
    return [{"instances": layout.instances, "intra_op_threads": layout.threads,
             "batch1_p50_ms": latency[layout.name].per_batch[1].median_ms,
             "batch1_p99_ms": latency[layout.name].per_batch[1].p99_ms,
             "requests_per_s": round(served[layout] / spent[layout], 1), "batch_per_instance": batches[layout]}
            for layout in found]


def choose_layout(rows: Sequence[dict[str, Any]], max_latency_loss: float, concurrency: int) -> tuple[dict, str]:
    """The most requests per second among layouts whose batch-1 p50 is within `max_latency_loss` of the best one:
    a lone request must not pay for throughput it does not need. Returns (row, why)."""
    best_p50 = min(row["batch1_p50_ms"] for row in rows)
    eligible = [row for row in rows if row["batch1_p50_ms"] <= best_p50 * (1 + max_latency_loss)]
    chosen = max(eligible, key=lambda row: row["requests_per_s"])
    others = "; ".join(f"{r['instances']} x {r['intra_op_threads']}: {r['requests_per_s']:.0f} req/s, "
                       f"{r['batch1_p50_ms']:.2f} ms" for r in rows if r is not chosen)
    why = (f"{chosen['instances']} instance(s) x {chosen['intra_op_threads']} thread(s): "
           f"{chosen['requests_per_s']:.0f} req/s at {concurrency} concurrent callers and batch-1 p50 "
           f"{chosen['batch1_p50_ms']:.2f} ms, the most throughput among layouts within "
           f"{max_latency_loss:.0%} of the best batch-1 p50 ({best_p50:.2f} ms)" + (f" (others: {others})" if others
                                                                                  else ""))
    return chosen, why
