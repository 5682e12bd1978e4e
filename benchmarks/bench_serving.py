"""Serving-path benchmark: served latency vs in-process, old vs derived serving defaults, and the fastest path.

    .venv/bin/python benchmarks/bench_serving.py [--bundle artifacts/builds/demo-intent/engine] [--duration 15]

In one run, on one engine bundle (the demo build by default; `engineforge demo` makes it):
(a) in-process: engine latency at 1x128 (engineforge.engines.measure_latency) and tokenizer + engine for the load
    tester's texts, one text per call;
(b) served through one Triton holding two publications of the bundle side by side: "before" (queue delay 2000 us,
    1 instance, no warmup: the old defaults) and "after" (the derived defaults); p50 at concurrency 1 and
    throughput at concurrency 4, token ids 1x128 to NAME_engine and text through the ensemble NAME;
(c) the fastest path for text: tokenize in the client, send the token ids straight to NAME_engine.
Triton's own statistics give, per request, the engine model's queue and compute time and the tokenizer's compute
time, so the table shows what the python-backend hop and the tokenizer hop cost. Prints a Markdown table (ratios
served / in-process) and writes reports/bench-serving/bench_serving.{md,json}.
Run it on a quiet machine: at 2 shared cores the load generator competes with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from engineforge.engines import load_engine  # noqa: E402
from engineforge.engines.engine_spec import EngineSpec  # noqa: E402
from engineforge.engines.timing import measure_latency  # noqa: E402
from engineforge.loadtest.config import LoadTestConfig  # noqa: E402
from engineforge.loadtest.payloads import DEFAULT_TEXTS  # noqa: E402
from engineforge.loadtest.runner import run_loadtest  # noqa: E402
from engineforge.serve.repository import publish_engine  # noqa: E402
from engineforge.serve.server import TritonServer  # noqa: E402
from engineforge.stats import median  # noqa: E402

DEFAULT_BUNDLE = ROOT / "artifacts" / "builds" / "demo-intent" / "engine"
OUT = ROOT / "reports" / "bench-serving"
SEQ_LEN = 128


def in_process(bundle: Path, spec: EngineSpec, iterations: int) -> dict[str, float]:
    from transformers import AutoTokenizer

    engine = load_engine(bundle / spec.model_file, spec.runtime, spec.intra_op_threads,
                         length_buckets=spec.length_buckets,
                         bucket_max_batch=spec.bucket_max_batch)  # as served
    engine_ms = measure_latency(engine, spec.vocab_size or 30522, 1, SEQ_LEN, iterations).median_ms
    tokenizer = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))
    times, tokenize_times = [], []
    for i in range(max(iterations, len(DEFAULT_TEXTS)) + 5):
        start = time.perf_counter()
        encoded = tokenizer([DEFAULT_TEXTS[i % len(DEFAULT_TEXTS)]], truncation=True,
                            max_length=spec.max_sequence_length, return_tensors="np")
        tokenized = time.perf_counter()
        engine.run({name: encoded[name].astype(np.int64) for name in spec.input_names})
        if i >= 5:  # the first calls pay for lazy allocation
            times.append((time.perf_counter() - start) * 1000)
            tokenize_times.append((tokenized - start) * 1000)
    return {"engine_1x128_ms": engine_ms, "text_ms": median(times),
            "tokenize_ms": median(tokenize_times)}


def _neighbour(conn: Any, work_s: float) -> None:
    while conn.recv() is not None:
        start = time.perf_counter()
        while time.perf_counter() - start < work_s:  # busy, as the client and Triton are between requests
            pass
        conn.send(1)


def engine_beside_neighbour(bundle: Path, spec: EngineSpec, iterations: int, work_s: float) -> float:
    """In-process engine p50 (ms) when another process works `work_s` on the shared cores before each call: what
    serving does to the engine at concurrency 1 (client and server run between calls), without any transport."""
    import multiprocessing

    from engineforge.engines.timing import synthetic_feeds

    engine = load_engine(bundle / spec.model_file, spec.runtime, spec.intra_op_threads,
                         length_buckets=spec.length_buckets,
                         bucket_max_batch=spec.bucket_max_batch)  # as served
    feeds = synthetic_feeds(engine.input_names, 1, SEQ_LEN, spec.vocab_size or 30522)
    ours, theirs = multiprocessing.Pipe()
    partner = multiprocessing.get_context("fork").Process(target=_neighbour, args=(theirs, work_s), daemon=True)
    partner.start()
    times = []
    for i in range(iterations + 20):
        ours.send(1)
        ours.recv()
        start = time.perf_counter()
        engine.run(feeds)
        if i >= 20:
            times.append((time.perf_counter() - start) * 1000)
    ours.send(None)
    partner.join(5)
    return median(times)


class ClientTokenized:
    """Load-test request function: tokenize in the client, send the token ids to the engine model."""

    def __init__(self, url: str, model: str, bundle: Path, spec: EngineSpec,
                 texts: tuple[str, ...] = DEFAULT_TEXTS) -> None:
        from transformers import AutoTokenizer

        self.url, self.model, self.spec, self.texts = url, model, spec, texts
        self.tokenizer = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, seq: int):
        import tritonclient.grpc.aio as grpcclient

        from engineforge.loadtest.records import ERR_CLIENT, RequestResult, clock, failure

        start = clock()
        try:
            loop = asyncio.get_running_loop()
            if self._client is None or self._loop is not loop:  # grpc.aio channels cannot move between loops
                self._client, self._loop = grpcclient.InferenceServerClient(self.url), loop
            encoded = self.tokenizer([self.texts[seq % len(self.texts)]], truncation=True,
                                     max_length=self.spec.max_sequence_length, return_tensors="np")
            inputs = []
            for key, name in (("input_ids", "INPUT_IDS"), ("attention_mask", "ATTENTION_MASK"),
                              ("token_type_ids", "TOKEN_TYPE_IDS")):
                if key in self.spec.input_names:
                    array = encoded[key].astype(np.int64)
                    inputs.append(grpcclient.InferInput(name, list(array.shape), "INT64"))
                    inputs[-1].set_data_from_numpy(array)
            result = await self._client.infer(self.model, inputs,
                                              outputs=[grpcclient.InferRequestedOutput("LABEL")])
            latency = clock() - start
            label = result.as_numpy("LABEL").reshape(-1)[0]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return failure(start, f"{type(exc).__name__}: {exc}", ERR_CLIENT)
        return RequestResult(start_s=start, latency_s=latency, ok=True, batch_size=1, output=str(label))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()


NOOP_MODEL = "transport_floor"
NOOP_CONFIG = """name: "transport_floor"
backend: "python"
max_batch_size: 32
input { name: "INPUT_IDS" data_type: TYPE_INT64 dims: -1 }
input { name: "ATTENTION_MASK" data_type: TYPE_INT64 dims: -1 }
input { name: "TOKEN_TYPE_IDS" data_type: TYPE_INT64 dims: -1 optional: true }
output { name: "LOGITS" data_type: TYPE_FP32 dims: -1 }
instance_group { count: 1 kind: KIND_CPU }
dynamic_batching { }
"""
NOOP_PY = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "INPUT_IDS").as_numpy().shape[0]
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("LOGITS", np.zeros((rows, NLABELS), np.float32))]))
        return out
"""


def write_transport_floor(repo: Path, n_labels: int) -> None:
    """A python-backend model with the engine's inputs and outputs that computes nothing: served through
    the same client, gRPC and stub hop, its p50 is what serving costs before any engine runs."""
    version = repo / NOOP_MODEL / "1"
    version.mkdir(parents=True)
    (repo / NOOP_MODEL / "config.pbtxt").write_text(NOOP_CONFIG, encoding="utf-8")
    (version / "model.py").write_text(NOOP_PY.replace("NLABELS", str(n_labels)), encoding="utf-8")


STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


def _stats(url: str, models: list[str]) -> dict[str, dict[str, int]]:
    """Triton's cumulative per-model statistics: request count and total ns per stage."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    totals = {}
    for model in models:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]
        totals[model] = {"count": int(stats["success"].get("count", 0))} | {
            stage: int(stats[stage].get("ns", 0)) for stage in STAGES}
    client.close()
    return totals


def served(server: TritonServer, model: str, mode: str, args: argparse.Namespace, request_fn=None,
           breakdown: tuple[str, ...] = (), texts: tuple[str, ...] = DEFAULT_TEXTS) -> dict[str, Any]:
    """p50 at c1, req/s at c4, and where the server spent each request's time (ms, from Triton's statistics);
    text mode sends `texts`, one per request, in turn."""
    levels, server_ms = {}, {}
    for concurrency in (1, 4):  # one run per level so the server statistics below are those of concurrency 1
        before = _stats(server.grpc_url, list(breakdown))
        config = LoadTestConfig(model=model, url=server.grpc_url, mode=mode, concurrency=(concurrency,),
                                duration_s=args.duration, warmup_s=args.warmup, seq_len=SEQ_LEN, progress_every_s=0,
                                texts=texts)
        levels[concurrency] = run_loadtest(config, request_fn).levels[0].metrics
        if concurrency == 1:
            after = _stats(server.grpc_url, list(breakdown))
            for name in breakdown:  # per request (warm-up included), at concurrency 1
                count = max(1, after[name]["count"] - before[name]["count"])
                server_ms[name] = {stage: round((after[name][stage] - before[name][stage]) / count / 1e6, 3)
                                   for stage in STAGES}
    if request_fn is not None:
        try:  # its channel belonged to the run's (now closed) event loop
            asyncio.run(request_fn.aclose())
        except Exception:
            pass
    by_level = levels
    return {"p50_c1_ms": by_level[1].latency_p50_ms, "p99_c1_ms": by_level[1].latency_p99_ms,
            "rps_c4": by_level[4].throughput_rps, "errors": sum(m.errors for m in by_level.values()),
            "server_ms": server_ms}


def _stage(row: dict[str, Any], suffix: str, queue: bool = True) -> str:
    """A version model's Triton timing (`<name>.v1.engine` / `.tokenizer`) from a row's breakdown."""
    stats = next((v for k, v in row["server_ms"].items() if k.endswith(suffix)), None)
    if stats is None:
        return "-"
    return (f"{stats['queue']:.2f} / " if queue else "") + f"{stats['compute_infer']:.2f}"


def table(inproc: dict[str, float], rows: list[dict[str, Any]]) -> str:
    lines = ["| path | config | served p50 @c1 (ms) | in-process (ms) | ratio | target | req/s @c4 | errors "
             "| engine queue / compute @c1 (ms) | tokenizer compute @c1 (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        base = inproc[row["baseline"]]
        ratio = row["p50_c1_ms"] / base if row["p50_c1_ms"] else float("nan")
        lines.append(f"| {row['path']} | {row['config']} | {row['p50_c1_ms']:.2f} | {base:.2f} | {ratio:.2f}x | "
                     f"<= {row['target']}x | {row['rps_c4']:.1f} | {row['errors']} | {_stage(row, '.engine')} | "
                     f"{_stage(row, '.tokenizer', queue=False)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="engine bundle (build output engine/)")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per concurrency level")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per concurrency level")
    parser.add_argument("--iterations", type=int, default=200, help="in-process timing iterations")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not (args.bundle / "engine.json").is_file():
        parser.error(f"{args.bundle} is not an engine bundle; run `engineforge demo` or pass --bundle PATH")
    spec = EngineSpec.load(args.bundle)
    inproc = in_process(args.bundle, spec, args.iterations)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        repo = Path(tmp) / "model_repo"
        publish_engine(args.bundle, repo, "before", max_queue_delay_us=2000, instances=1, warmup=False)
        after = publish_engine(args.bundle, repo, "after")
        derived = (repo / after.version_models[-1] / "config.pbtxt").read_text()
        write_transport_floor(repo, len(spec.labels))
        with TritonServer(repo, log_file=args.out / "tritonserver.log") as server:
            floor = served(server, NOOP_MODEL, "tokens", args, breakdown=(NOOP_MODEL,))
            inproc["engine_beside_ms"] = engine_beside_neighbour(args.bundle, spec, args.iterations,
                                                                 floor["p50_c1_ms"] / 1000)
            for name in ("before", "after"):
                entry, engine, tokenizer = f"{name}_engine", f"{name}.v1.engine", f"{name}.v1.tokenizer"
                rows.append({"path": "token ids 1x128 -> engine", "config": name, "baseline": "engine_1x128_ms",
                             "target": 1.3, **served(server, entry, "tokens", args, breakdown=(engine,))})
                rows.append({"path": "text -> ensemble", "config": name, "baseline": "text_ms", "target": 1.5,
                             **served(server, name, "text", args, breakdown=(engine, tokenizer))})
            fastest = ClientTokenized(server.grpc_url, after.engine_model, args.bundle, spec)
            rows.append({"path": "text, client-side tokenization -> engine", "config": "after",
                         "baseline": "text_ms", "target": 1.5,
                         **served(server, after.engine_model, "tokens", args, request_fn=fastest,
                                  breakdown=(after.version_models[-1],))})
    floor_ms = floor["p50_c1_ms"]
    markdown = (f"# Serving benchmark: {args.bundle} ({spec.runtime}, {spec.precision})\n\n"
                f"In-process: engine 1x{SEQ_LEN} {inproc['engine_1x128_ms']:.2f} ms; tokenizer + engine "
                f"{inproc['text_ms']:.2f} ms (tokenizer {inproc['tokenize_ms']:.2f} ms), median.\n"
                f"Load: {args.duration:g} s per level after {args.warmup:g} s warm-up.\n\n" + table(inproc, rows)
                + f"\nTransport floor: a python-backend model with the engine's inputs that computes nothing, "
                  f"1x{SEQ_LEN} token ids, p50 @c1 {floor_ms:.2f} ms ({floor['rps_c4']:.0f} req/s @c4). "
                  f"Served token ids minus the floor, over in-process: "
                  + ", ".join(f"{r['config']} {(r['p50_c1_ms'] - floor_ms) / inproc['engine_1x128_ms']:.2f}x"
                              for r in rows if r["baseline"] == "engine_1x128_ms") + ".\n"
                + f"\nThe same engine in-process while another process works {floor_ms:.2f} ms (the floor) on the "
                  f"shared cores before each call: p50 {inproc['engine_beside_ms']:.2f} ms, "
                  f"{inproc['engine_beside_ms'] / inproc['engine_1x128_ms']:.2f}x its time alone. That is the cost "
                  f"of sharing {os.cpu_count()} cores between client, server and engine, with no transport.\n")
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_serving.md").write_text(markdown + "\nDerived engine config:\n\n```\n" + derived + "```\n",
                                              encoding="utf-8")
    (args.out / "bench_serving.json").write_text(json.dumps({"bundle": str(args.bundle), "in_process": inproc,
                                                             "rows": rows, "transport_floor": floor,
                                                             "settings": vars(args) | {
                                                                 "bundle": str(args.bundle), "out": str(args.out)}},
                                                            indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
