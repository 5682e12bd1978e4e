"""Load-generator benchmark: the ceiling of `engineforge loadtest` against a trivial model, and its client CPU per
request next to Triton's C++ perf_analyzer at the same loads. Run on demand, not in tests.

    bash benchmarks/get_perf_analyzer.sh        # once: perf_analyzer into artifacts/perf_analyzer/
    .venv/bin/python benchmarks/bench_loadgen.py [--rates 200,500] [--ceiling-rates 500,1000,1500,2000,3000]

One Triton serves a python-backend model that computes nothing (token ids in, two logits out), so nearly all the
cost of a request is transport and the generator. The tools send the same request (INPUT_IDS and ATTENTION_MASK,
INT64 [1, 16]) open loop at a fixed rate, each as a subprocess; a bare grpc.aio client (benchmarks/grpc_floor.py:
one prebuilt request, nothing recorded or checked) shows what any Python gRPC client spends. All are measured the
same way: the CPU time of the tool's process tree (utime + stime from /proc, worker processes included) over an
interval in the middle of its run, divided by the requests Triton counted for the model over that interval (its
statistics API), so start-up and warm-up are outside the figure and the count is what reached the server. A rate
is "kept" when Triton counted at least 97 % of it over the interval. On a 2-core machine the server and the
generator share the cores, so the ceiling is that of the pair; the per-request CPU is the fair comparison.
Writes benchmarks/results/loadgen.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_serving import NOOP_PY  # noqa: E402  (benchmarks/bench_serving.py)

from engineforge.serve.server import TritonServer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER", ROOT / "artifacts" / "perf_analyzer" / "perf_analyzer"))
MODEL = "noop_tokens"
SEQ = 16
CONFIG = f"""name: "{MODEL}"
backend: "python"
max_batch_size: 64
input {{ name: "INPUT_IDS" data_type: TYPE_INT64 dims: -1 }}
input {{ name: "ATTENTION_MASK" data_type: TYPE_INT64 dims: -1 }}
output {{ name: "LOGITS" data_type: TYPE_FP32 dims: 2 }}
instance_group {{ count: 1 kind: KIND_CPU }}
dynamic_batching {{ }}
"""
CODE = NOOP_PY.replace("NLABELS", "2")  # the transport-floor model of bench_serving.py, two logits
TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """utime + stime of `pid` and all its descendants, in seconds."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    keep, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _) in stats.items():
            if ppid == parent and child not in keep:
                keep.add(child)
                frontier.append(child)
    return sum(stats[p][1] for p in keep if p in stats)


def server_count(url: str) -> int:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(MODEL, as_json=True)
    finally:
        client.close()
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def measure(command: list[str], url: str, rate: float, settle_s: float, interval_s: float) -> dict[str, Any]:
    """Start `command`, wait until requests flow plus `settle_s`, then CPU and server count over `interval_s`."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = server_count(url)
        deadline = time.monotonic() + 60
        while server_count(url) == first:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} sent nothing: {proc.communicate()[0][-2000:]}")
            time.sleep(0.05)
        time.sleep(settle_s)
        cpu0, n0, t0 = tree_cpu_s(proc.pid), server_count(url), time.monotonic()
        time.sleep(interval_s)
        cpu1, n1, t1 = tree_cpu_s(proc.pid), server_count(url), time.monotonic()
    finally:
        proc.kill()
        proc.communicate()
    requests, seconds = n1 - n0, t1 - t0
    achieved = requests / seconds
    return {"rate": rate, "achieved_rps": round(achieved, 1), "kept": achieved >= 0.97 * rate,
            "cpu_percent": round(100 * (cpu1 - cpu0) / seconds, 1),
            "cpu_us_per_request": round(1e6 * (cpu1 - cpu0) / max(requests, 1), 1)}


def ours(url: str, rate: float, workers: int, run_s: float) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "engineforge"), "loadtest", "--url", url, "--model", MODEL, "--mode",
            "tokens", "--seq-len", str(SEQ), "--rate", f"{rate:g}", "--duration", f"{run_s:g}", "--warmup", "1",
            "--workers", str(workers), "--no-plot", "--progress-every", "0", "--out",
            str(Path(tempfile.gettempdir()) / "bench-loadgen")]


def grpc_floor(url: str, rate: float, run_s: float) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "grpc_floor.py"), url, MODEL, f"{rate:g}", f"{run_s:g}"]


def perf_analyzer(url: str, rate: float) -> list[str]:
    return [str(PERF_ANALYZER), "-m", MODEL, "-u", url, "-i", "grpc", "-b", "1", "--shape", f"INPUT_IDS:{SEQ}",
            "--shape", f"ATTENTION_MASK:{SEQ}", "--request-rate-range", f"{rate:g}", "--measurement-interval",
            "20000", "--max-trials", "1", "--stability-percentage", "999"]


def render(data: dict[str, Any]) -> str:
    lines = ["# Load generator: client CPU per request and ceiling", "",
             f"Trivial python-backend model, token ids 1×{SEQ}, open loop; {data['machine']}. CPU of each tool's "
             "process tree over a mid-run interval, requests counted by Triton over the same interval.", "",
             "| load (req/s) | tool | achieved req/s | kept | client CPU % | CPU µs / request | vs perf_analyzer |",
             "|---:|---|---:|---|---:|---:|---:|"]
    for row in data["cpu"]:
        base = next((r for r in data["cpu"] if r["rate"] == row["rate"] and r["tool"] == "perf_analyzer"), None)
        ratio = f"{row['cpu_us_per_request'] / base['cpu_us_per_request']:.2f}×" if base else "–"
        lines.append(f"| {row['rate']:g} | {row['tool']} | {row['achieved_rps']} | {'yes' if row['kept'] else 'no'} | "
                     f"{row['cpu_percent']} | {row['cpu_us_per_request']} | {ratio} |")
    lines += ["", "Ceiling (highest rate kept, of those tried):", "", "| tool | rates tried | ceiling (req/s) |",
              "|---|---|---:|"]
    for tool, rows in data["ceiling"].items():
        kept = [r["rate"] for r in rows if r["kept"]]
        tried = ", ".join(f"{r['rate']:g}{'' if r['kept'] else ' (missed: ' + str(r['achieved_rps']) + ')'}"
                          for r in rows)
        lines.append(f"| {tool} | {tried} | {max(kept) if kept else '–'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="200,500", help="loads for the CPU-per-request comparison")
    parser.add_argument("--ceiling-rates", default="500,1000,1500,2000,3000")
    parser.add_argument("--interval", type=float, default=6.0, help="measured seconds per run")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    ceiling_rates = [float(r) for r in args.ceiling_rates.split(",") if r.strip()]
    run_s = args.interval + 8  # our tool runs warm-up + this; the interval sits inside it
    have_pa = PERF_ANALYZER.is_file()
    if not have_pa:
        print(f"no perf_analyzer at {PERF_ANALYZER} (bash benchmarks/get_perf_analyzer.sh); measuring ours only",
              file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        (repo / MODEL / "1").mkdir(parents=True)
        (repo / MODEL / "config.pbtxt").write_text(CONFIG)
        (repo / MODEL / "1" / "model.py").write_text(CODE)
        with TritonServer(repo, log_file=Path(tmp) / "triton.log") as server:
            url = server.grpc_url
            tools = {"engineforge (1 process)": lambda r: ours(url, r, 1, run_s),
                     "engineforge (2 processes)": lambda r: ours(url, r, 2, run_s),
                     "bare Python gRPC (floor)": lambda r: grpc_floor(url, r, run_s)}
            if have_pa:
                tools["perf_analyzer"] = lambda r: perf_analyzer(url, r)
            cpu_rows, ceiling = [], {}
            for rate in rates:
                for tool, command in tools.items():
                    row = {"tool": tool, **measure(command(rate), url, rate, 2.0, args.interval)}
                    print(f"  {rate:g} req/s {tool}: {row}", file=sys.stderr, flush=True)
                    cpu_rows.append(row)
            for tool, command in tools.items():
                if tool.startswith("bare") or not ceiling_rates:
                    continue
                ceiling[tool] = []
                for rate in ceiling_rates:
                    row = measure(command(rate), url, rate, 2.0, args.interval)
                    print(f"  ceiling {rate:g} req/s {tool}: {row}", file=sys.stderr, flush=True)
                    ceiling[tool].append(row)
                    if not row["kept"]:
                        break
    data = {"machine": f"{os.cpu_count()} cores shared by server and generator",
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpu": cpu_rows, "ceiling": ceiling}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loadgen.json").write_text(json.dumps(data, indent=2) + "\n")
    markdown = render(data)
    (RESULTS / "loadgen.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
