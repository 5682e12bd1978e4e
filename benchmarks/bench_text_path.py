"""Text-path benchmark: how many hops raw text pays, old layout vs new, against in-process and the transport floor.

    .venv/bin/python benchmarks/bench_text_path.py [--bundle artifacts/builds/demo-intent/engine] [--duration 10]

In one run, on one engine bundle (the demo build by default; `engineforge demo` makes it) and ONE Triton:
- two-hop (old): TEXT -> ensemble -> tokenizer model -> engine model (published text_path "two-hop");
- one-hop (new, the default): TEXT -> ensemble -> the engine model, which tokenizes itself;
- client tokenizes: the client tokenizes with the bundle's tokenizer and sends token ids to NAME_engine (its
  tokenizing time counts in the latency);
- in-process: tokenize + engine on the same texts, one text per call, with the engine opened as served
  (text_runtime.infer_texts: the one-hop engine model's own functions, no Triton);
- transport floor: a python-backend model that computes nothing (bench_serving.py's), token ids 1x128.
Texts: the demo messages (engineforge/demo/data/eval.jsonl), one per request, in turn. Reports served p50/p99 at
concurrency 1 and throughput at concurrency 4 per layout, the ratio to in-process, and whether the target holds
(p50 <= 1.3 x in-process + floor); writes reports/bench-text-path/bench_text_path.{md,json}.
Run it on a quiet machine: at 2 shared cores the load generator competes with the server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serving import NOOP_MODEL, ClientTokenized, served, write_transport_floor  # noqa: E402

from engineforge.engines.engine_spec import EngineSpec  # noqa: E402
from engineforge.engines.request_limits import derive_request_limits  # noqa: E402
from engineforge.engines.tokenize_runtime import load_tokenizer  # noqa: E402
from engineforge.loadtest.payloads import load_texts  # noqa: E402
from engineforge.serve import text_runtime  # noqa: E402
from engineforge.serve.engine_runtime import open_bundle_engine  # noqa: E402
from engineforge.serve.repository import publish_engine  # noqa: E402
from engineforge.serve.server import TritonServer  # noqa: E402
from engineforge.stats import median, percentiles  # noqa: E402

DEFAULT_BUNDLE = ROOT / "artifacts" / "builds" / "demo-intent" / "engine"
DEFAULT_TEXTS = ROOT / "engineforge" / "demo" / "data" / "eval.jsonl"
OUT = ROOT / "reports" / "bench-text-path"
TARGET_RATIO = 1.3  # issue 21: served p50 <= 1.3 x in-process + one transport floor


def in_process(bundle: Path, spec: EngineSpec, texts: tuple[str, ...], iterations: int) -> dict[str, float]:
    """Tokenize + engine per text, exactly as the one-hop engine model computes an answer, without Triton."""
    engine, tokenizer = open_bundle_engine(bundle, spec), load_tokenizer(bundle / "tokenizer")
    limits = derive_request_limits(spec, max_batch_size=32)
    times = []
    for i in range(max(iterations, len(texts)) + 10):
        start = time.perf_counter()
        text_runtime.infer_texts(engine, tokenizer, spec, limits, [texts[i % len(texts)]])
        if i >= 10:  # the first calls pay for lazy allocation
            times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": median(times), "p99_ms": percentiles(times, [99])[0]}


def target_ms(inproc_ms: float, floor_ms: float) -> float:
    return TARGET_RATIO * inproc_ms + floor_ms


def table(inproc: dict[str, float], floor: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    goal = target_ms(inproc["p50_ms"], floor["p50_c1_ms"])
    old = next(r["rps_c4"] for r in rows if r["layout"] == "two-hop")
    lines = ["| layout | p50 @c1 (ms) | p99 @c1 (ms) | p50 / in-process | target p50 <= "
             f"{goal:.2f} ms | req/s @c4 | vs two-hop @c4 | errors |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        p50 = row["p50_c1_ms"] or float("nan")
        lines.append(f"| {row['layout']} | {p50:.2f} | {row['p99_c1_ms'] or float('nan'):.2f} | "
                     f"{p50 / inproc['p50_ms']:.2f}x | {'yes' if p50 <= goal else 'no'} | {row['rps_c4']:.1f} | "
                     f"{row['rps_c4'] / old:.2f}x | {row['errors']} |")
    lines.append(f"| in-process (tokenize + engine) | {inproc['p50_ms']:.2f} | {inproc['p99_ms']:.2f} | 1.00x | - | "
                 f"- | - | - |")
    lines.append(f"| transport floor (no-op python model) | {floor['p50_c1_ms']:.2f} | {floor['p99_c1_ms']:.2f} | - "
                 f"| - | {floor['rps_c4']:.1f} | - | {floor['errors']} |")
    return "\n".join(lines) + "\n"


LAYOUTS = (("two-hop", "hop2"), ("one-hop", "hop1"), ("client tokenizes", "hop1_engine"))


def _served_layout(server: TritonServer, args: argparse.Namespace, spec: EngineSpec, texts: tuple[str, ...],
                   layout: str, model: str) -> dict[str, Any]:
    if layout != "client tokenizes":
        return served(server, model, "text", args, texts=texts)
    client = ClientTokenized(server.grpc_url, model, args.bundle, spec, texts)
    return served(server, model, "tokens", args, request_fn=client)


def _median_row(layout: str, model: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("p50_c1_ms", "p99_c1_ms", "rps_c4")
    return {"layout": layout, "model": model, **{k: median([r[k] for r in runs if r[k] is not None]) for k in keys},
            "errors": sum(r["errors"] for r in runs), "rounds": [{k: r[k] for k in keys} for r in runs]}


def measure(args: argparse.Namespace, spec: EngineSpec, texts: tuple[str, ...]) -> tuple[dict, dict, list[dict]]:
    """In-process, the floor and each layout, served side by side from one repository by one Triton, in `rounds`
    rounds whose layout order rotates (on shared cores the machine's speed drifts within a run: measuring each
    layout once, one after the other, would hand the drift to whichever came last); medians over the rounds.
    In-process is timed once per round too, with the server up and idle."""
    runs: dict[str, list[dict[str, Any]]] = {layout: [] for layout, _ in LAYOUTS}
    inproc_runs = []
    with tempfile.TemporaryDirectory(prefix="bench-text-path-") as tmp:
        repo = Path(tmp) / "model_repo"
        publish_engine(args.bundle, repo, "hop2", text_path="two-hop")
        publish_engine(args.bundle, repo, "hop1", text_path="one-hop")
        write_transport_floor(repo, len(spec.labels))
        with TritonServer(repo, log_file=args.out / "tritonserver.log") as server:
            floor = served(server, NOOP_MODEL, "tokens", args)
            for round_ in range(args.rounds):
                inproc_runs.append(in_process(args.bundle, spec, texts, args.iterations))
                for layout, model in LAYOUTS[round_ % 3:] + LAYOUTS[:round_ % 3]:
                    runs[layout].append(_served_layout(server, args, spec, texts, layout, model))
    inproc = {key: median([run[key] for run in inproc_runs]) for key in ("p50_ms", "p99_ms")}
    return inproc | {"runs_p50_ms": [run["p50_ms"] for run in inproc_runs]}, floor, [
        _median_row(layout, model, runs[layout]) for layout, model in LAYOUTS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="engine bundle (build output engine/)")
    parser.add_argument("--texts", type=Path, default=DEFAULT_TEXTS, help="texts (.jsonl/.csv/.txt), one per request")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="measured seconds per concurrency level, per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each layout once per round in rotated order")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per concurrency level")
    parser.add_argument("--iterations", type=int, default=300, help="in-process timing iterations per round")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not (args.bundle / "engine.json").is_file():
        parser.error(f"{args.bundle} is not an engine bundle; run `engineforge demo` or pass --bundle PATH")
    spec, texts = EngineSpec.load(args.bundle), tuple(load_texts(args.texts))
    args.out.mkdir(parents=True, exist_ok=True)
    inproc, floor, rows = measure(args, spec, texts)
    markdown = (f"# Text-path benchmark: {args.bundle} ({spec.runtime}, {spec.precision})\n\n"
                f"Texts: {len(texts)} from {args.texts}, one per request. Load: {args.rounds} rounds (layout order "
                f"rotated), {args.duration:g} s per level after {args.warmup:g} s warm-up; medians over the rounds; "
                f"{os.cpu_count()} cores shared by client, server and engine. In-process p50 per round: "
                + " / ".join(f"{ms:.2f}" for ms in inproc["runs_p50_ms"]) + " ms.\n"
                f"Target: served p50 @c1 <= {TARGET_RATIO} x in-process ({inproc['p50_ms']:.2f} ms) + one transport "
                f"floor ({floor['p50_c1_ms']:.2f} ms) = {target_ms(inproc['p50_ms'], floor['p50_c1_ms']):.2f} ms; "
                f"throughput @c4 >= 1.5x two-hop.\n\n" + table(inproc, floor, rows))
    print(markdown)
    (args.out / "bench_text_path.md").write_text(markdown, encoding="utf-8")
    settings = vars(args) | {"bundle": str(args.bundle), "texts": str(args.texts), "out": str(args.out)}
    (args.out / "bench_text_path.json").write_text(json.dumps(
        {"bundle": str(args.bundle), "in_process": inproc, "transport_floor": floor, "rows": rows,
         "target_ms": target_ms(inproc["p50_ms"], floor["p50_c1_ms"]), "settings": settings}, indent=2) + "\n",
        encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
