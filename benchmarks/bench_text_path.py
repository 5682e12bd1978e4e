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


def measure(args: argparse.Namespace, spec: EngineSpec, texts: tuple[str, ...]) -> tuple[dict, list[dict]]:
    """The floor and each layout, served side by side from one repository by one Triton."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-text-path-") as tmp:
        repo = Path(tmp) / "model_repo"
        publish_engine(args.bundle, repo, "hop2", text_path="two-hop")
        hop1 = publish_engine(args.bundle, repo, "hop1", text_path="one-hop")
        write_transport_floor(repo, len(spec.labels))
        with TritonServer(repo, log_file=args.out / "tritonserver.log") as server:
            floor = served(server, NOOP_MODEL, "tokens", args)
            for layout, model in (("two-hop", "hop2"), ("one-hop", "hop1")):
                rows.append({"layout": layout, "model": model, **served(server, model, "text", args, texts=texts)})
            client = ClientTokenized(server.grpc_url, hop1.engine_model, args.bundle, spec, texts)
            rows.append({"layout": "client tokenizes", "model": hop1.engine_model,
                         **served(server, hop1.engine_model, "tokens", args, request_fn=client)})
    return floor, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="engine bundle (build output engine/)")
    parser.add_argument("--texts", type=Path, default=DEFAULT_TEXTS, help="texts (.jsonl/.csv/.txt), one per request")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per concurrency level")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per concurrency level")
    parser.add_argument("--iterations", type=int, default=400, help="in-process timing iterations")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not (args.bundle / "engine.json").is_file():
        parser.error(f"{args.bundle} is not an engine bundle; run `engineforge demo` or pass --bundle PATH")
    spec, texts = EngineSpec.load(args.bundle), tuple(load_texts(args.texts))
    args.out.mkdir(parents=True, exist_ok=True)
    inproc = in_process(args.bundle, spec, texts, args.iterations)
    floor, rows = measure(args, spec, texts)
    markdown = (f"# Text-path benchmark: {args.bundle} ({spec.runtime}, {spec.precision})\n\n"
                f"Texts: {len(texts)} from {args.texts}, one per request. Load: {args.duration:g} s per level "
                f"after {args.warmup:g} s warm-up; {os.cpu_count()} cores shared by client, server and engine.\n"
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
