"""CPU engine runtimes (ONNX Runtime, OpenVINO) behind one call signature, and latency measurement.

A runner maps {input name: int64 array} to logits. The build uses runners to validate an engine in the
runtime that will serve it and to time candidates on the build machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engineforge.errors import ConfigError

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]
RUNTIMES = ("onnxruntime", "openvino")


def make_runner(runtime: str, onnx_path: Path, threads: int) -> tuple[Runner, list[str]]:
    """Return (runner, input names the model takes)."""
    if runtime == "onnxruntime":
        from .inference import ort_session

        session = ort_session(onnx_path, threads)
        names = [i.name for i in session.get_inputs()]
        return (lambda feeds: session.run(None, {n: feeds[n] for n in names})[0]), names
    if runtime == "openvino":
        try:
            import openvino as ov
        except ImportError as exc:
            raise ConfigError("runtime 'openvino' needs the openvino package: "
                              "pip install 'engineforge[openvino]'") from exc
        from engineforge.serve.engine_backends import openvino_properties

        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", openvino_properties(threads))
        request = compiled.create_infer_request()
        names = [port.get_any_name() for port in compiled.inputs]
        output = compiled.output(0)
        return (lambda feeds: np.array(request.infer({n: feeds[n] for n in names})[output])), names
    raise ConfigError(f"unknown runtime {runtime!r}; choose one of {RUNTIMES}")


def runtime_logits(runtime: str, onnx_path: Path, tokenizer: Any, texts: Sequence[str], max_length: int,
                   threads: int, batch_size: int = 32) -> np.ndarray:
    from .data import batches, encode

    runner, names = make_runner(runtime, onnx_path, threads)
    return np.concatenate([runner(encode(tokenizer, chunk, max_length, names)) for chunk in batches(texts, batch_size)])


@dataclass(frozen=True)
class Latency:
    batch: int
    seq_len: int
    median_ms: float
    p99_ms: float
    iterations: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def synthetic_feeds(names: Sequence[str], batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Timing inputs only (latency does not depend on token values); never used for accuracy."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 2000, size=(batch, seq_len), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {n: feeds[n] for n in names}


def measure_latency(runner: Runner, names: Sequence[str], batch: int = 1, seq_len: int = 128,
                    iterations: int = 50, warmup: int = 5, max_seconds: float = 20.0) -> Latency:
    """Median and p99 wall time of `iterations` calls (fewer if `max_seconds` runs out)."""
    feeds = synthetic_feeds(names, batch, seq_len)
    for _ in range(warmup):
        runner(feeds)
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < iterations and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        runner(feeds)
        times.append((time.perf_counter() - start) * 1000)
    return _summary(times, batch, seq_len)


def _summary(times: list[float], batch: int, seq_len: int) -> Latency:
    times = sorted(times)
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    return Latency(batch, seq_len, round(statistics.median(times), 3), round(p99, 3), len(times))


def measure_latencies(runners: dict[str, tuple[Runner, Sequence[str]]], batch: int = 1, seq_len: int = 128,
                      iterations: int = 50, per_round: int = 5, warmup: int = 5,
                      settle_s: float = 0.02) -> dict[str, Latency]:
    """Time several engines in interleaved rounds (`per_round` calls each, in turn), so that load from
    elsewhere on a shared machine hits them all alike: back-to-back runs on these 2-core machines
    drifted by 15 % between minutes (6.5 vs 7.7 ms for the same file), enough to flip a comparison.

    Each round starts with a pause and one untimed call: ONNX Runtime's and OpenVINO's worker threads
    spin for a while after a call, and would otherwise steal the cores from the next engine's first calls."""
    feeds = {name: synthetic_feeds(names, batch, seq_len) for name, (_, names) in runners.items()}
    for name, (runner, _) in runners.items():
        for _ in range(warmup):
            runner(feeds[name])
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(-(-iterations // per_round)):
        for name, (runner, _) in runners.items():
            time.sleep(settle_s)
            runner(feeds[name])
            for _ in range(per_round):
                start = time.perf_counter()
                runner(feeds[name])
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: _summary(values, batch, seq_len) for name, values in times.items()}
