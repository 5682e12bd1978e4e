"""Served speed on the traffic users send: builds from before issue 21 and the same presets built now, side by side.

    .venv/bin/python benchmarks/bench_traffic.py int8=OLD_DIR:NEW_DIR fastcpu=OLD_DIR:NEW_DIR ... \\
        [--texts-file engineforge/demo/data/eval.jsonl] [--duration 10] [--warmup 3]

Each NAME=OLD:NEW pairs two build directories (what build-engine wrote) of the same checkpoint and preset: OLD made
before (no traffic profile, no length buckets, instances cores // threads) and published as it was served then
(text_path "two-hop": tokenizer model -> engine model), NEW made by this code and published with today's defaults
(one hop, its length buckets and measured instances). In ONE run and ONE Triton:
1. in-process, per NEW build: tokenize + engine per text, one text per call, the engine opened as served (the
   baseline of the latency target);
2. the transport floor: a python-backend model that computes nothing (bench_serving.py's), p50 at concurrency 1;
3. `engineforge loadtest --model NAME_before,NAME,...` (loadtest.compare.run_comparison: every model at each level
   in turn, the first rotating), raw text from --texts-file, concurrency 1 and 4; --rounds times, the model order
   rotating between rounds. Whole runs on these shared 2-core machines move by 15-25 %, so each figure is the
   median of the rounds and each ratio the median of the rounds' ratios (every round's figures are kept).
Targets (issue 21): NEW p50 at concurrency 1 <= 1.3 x in-process + the floor; NEW req/s at concurrency 4 >= 1.5 x
OLD's. Writes reports/bench-traffic/ (bench_traffic.{md,json} and the load test's comparison report).
Run it on a quiet machine: at 2 shared cores the load generator competes with the server.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serving import NOOP_MODEL, served, write_transport_floor  # noqa: E402
from bench_text_path import TARGET_RATIO, in_process  # noqa: E402

from engineforge.engines.engine_spec import EngineSpec  # noqa: E402
from engineforge.loadtest.compare import comparison_table, run_comparison, write_comparison  # noqa: E402
from engineforge.loadtest.config import LoadTestConfig  # noqa: E402
from engineforge.loadtest.payloads import load_texts  # noqa: E402
from engineforge.serve.repository import publish_engine  # noqa: E402
from engineforge.serve.server import TritonServer  # noqa: E402

OUT = ROOT / "reports" / "bench-traffic"
DEFAULT_TEXTS = ROOT / "engineforge" / "demo" / "data" / "eval.jsonl"
THROUGHPUT_TARGET = 1.5  # issue 21: req/s at concurrency 4 >= 1.5 x before


def parse_pairs(items: list[str]) -> dict[str, tuple[Path, Path]]:
    pairs = {}
    for item in items:
        name, _, dirs = item.partition("=")
        old, _, new = dirs.partition(":")
        if not (name and old and new):
            raise SystemExit(f"expected NAME=OLD_BUILD_DIR:NEW_BUILD_DIR, got {item!r}")
        pairs[name] = (Path(old), Path(new))
    return pairs


def describe(bundle: Path) -> str:
    spec = EngineSpec.load(bundle)
    plan = spec.serving_plan or {}
    instances = plan.get("instances", "cores // threads")
    return (f"{spec.precision} in {spec.runtime}, buckets {list(spec.length_buckets) or 'none'}, "
            f"{instances} instance(s) x {spec.intra_op_threads} thread(s)")


def metrics_by_level(result: Any) -> dict[int, Any]:
    return {int(level.concurrency): level.metrics for level in result.levels}


def rows_of(pairs: dict[str, tuple[Path, Path]], results: list[Any], inproc: dict[str, dict[str, float]],
            floor_ms: float) -> list[dict[str, Any]]:
    by_model = {r.config.model: metrics_by_level(r) for r in results}
    rows = []
    for name in pairs:
        old, new = by_model[f"{name}_before"], by_model[name]
        goal = TARGET_RATIO * inproc[name]["p50_ms"] + floor_ms
        rows.append({
            "build": name, "in_process_p50_ms": inproc[name]["p50_ms"], "target_p50_ms": round(goal, 3),
            "before": {"p50_c1_ms": old[1].latency_p50_ms, "p99_c1_ms": old[1].latency_p99_ms,
                       "rps_c4": old[4].throughput_rps, "errors": old[1].errors + old[4].errors},
            "after": {"p50_c1_ms": new[1].latency_p50_ms, "p99_c1_ms": new[1].latency_p99_ms,
                      "rps_c4": new[4].throughput_rps, "errors": new[1].errors + new[4].errors},
            "p50_target_met": new[1].latency_p50_ms <= goal,
            "throughput_ratio": round(new[4].throughput_rps / old[4].throughput_rps, 3),
        })
    return rows


def median_rows(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per build, the median of each figure over the rounds (the ratio: the median of the rounds' ratios), with
    every round's row kept under "rounds"."""
    merged = []
    for i, row in enumerate(rounds[0]):
        each = [r[i] for r in rounds]
        mid = {side: {k: statistics.median(r[side][k] for r in each) for k in row[side]}
               for side in ("before", "after")}
        ratio = round(statistics.median(r["throughput_ratio"] for r in each), 3)
        merged.append(row | mid | {"throughput_ratio": ratio,
                                   "p50_target_met": mid["after"]["p50_c1_ms"] <= row["target_p50_ms"],
                                   "rounds": each})
    return merged


def ratios_per_round(rows: list[dict[str, Any]]) -> str:
    return "; ".join(f"{r['build']} " + ", ".join(f"{each['throughput_ratio']:.2f}×" for each in r["rounds"])
                     for r in rows)


def table(rows: list[dict[str, Any]], floor_ms: float) -> str:
    lines = ["| build | p50 @c1 before → after (ms) | p99 @c1 before → after (ms) | in-process (ms) | target p50 "
             f"(1.3× + floor {floor_ms:.2f}) | met | req/s @c4 before → after | after / before | ≥ 1.5× |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(f"| {r['build']} | {b['p50_c1_ms']:.2f} → {a['p50_c1_ms']:.2f} | {b['p99_c1_ms']:.2f} → "
                     f"{a['p99_c1_ms']:.2f} | {r['in_process_p50_ms']:.2f} | ≤ {r['target_p50_ms']:.2f} | "
                     f"{'yes' if r['p50_target_met'] else 'no'} | {b['rps_c4']:.1f} → {a['rps_c4']:.1f} | "
                     f"{r['throughput_ratio']:.2f}× | "
                     f"{'yes' if r['throughput_ratio'] >= THROUGHPUT_TARGET else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="+", help="NAME=OLD_BUILD_DIR:NEW_BUILD_DIR")
    parser.add_argument("--texts-file", type=Path, default=DEFAULT_TEXTS)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per level and model")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--iterations", type=int, default=300, help="in-process calls per build")
    parser.add_argument("--rounds", type=int, default=3, help="load-test rounds (medians are reported)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    pairs = parse_pairs(args.pairs)
    texts = tuple(load_texts(args.texts_file))
    inproc = {name: in_process(new / "engine", EngineSpec.load(new / "engine"), texts, args.iterations)
              for name, (_, new) in pairs.items()}
    settings = {name: {"before": describe(old / "engine"), "after": describe(new / "engine")}
                for name, (old, new) in pairs.items()}
    with tempfile.TemporaryDirectory(prefix="bench-traffic-") as tmp:
        repo = Path(tmp) / "model_repo"
        models = []
        for name, (old, new) in pairs.items():
            publish_engine(old / "engine", repo, f"{name}_before", text_path="two-hop")
            publish_engine(new / "engine", repo, name)
            models += [f"{name}_before", name]
        write_transport_floor(repo, 8)
        with TritonServer(repo, log_file=args.out / "tritonserver.log", startup_timeout_s=300) as server:
            floor = served(server, NOOP_MODEL, "tokens", args, breakdown=(NOOP_MODEL,))
            config = LoadTestConfig(model=models[0], url=server.grpc_url, mode="text", concurrency=(1, 4),
                                    duration_s=args.duration, warmup_s=args.warmup, texts=texts,
                                    texts_source=str(args.texts_file), progress_every_s=0)
            rounds = [run_comparison(config, models[r % len(models):] + models[:r % len(models)])
                      for r in range(args.rounds)]
    args.out.mkdir(parents=True, exist_ok=True)
    for r, results in enumerate(rounds, 1):
        write_comparison(results, args.out, stem=f"comparison_round{r}")
    rows = median_rows([rows_of(pairs, results, inproc, floor["p50_c1_ms"]) for results in rounds])
    setup = "\n".join(f"- `{n}`: before {s['before']}, two-hop; after {s['after']}, one-hop" for n, s in
                      settings.items())
    markdown = (f"# Served speed on the traffic users send: before vs after issue 21\n\nTexts: {args.texts_file} "
                f"({len(texts)}), one per request; {args.duration:g} s per level and model after {args.warmup:g} s "
                f"warm-up, models interleaved level by level; {args.rounds} round(s), medians (ratio: the median "
                f"of the rounds' ratios).\n\n{setup}\n\n{table(rows, floor['p50_c1_ms'])}\n"
                f"Throughput ratio @c4 per round: {ratios_per_round(rows)}.\n\n"
                f"Transport floor (python model computing nothing, token ids): p50 @c1 {floor['p50_c1_ms']:.2f} ms.\n"
                + "".join(f"\n## Round {r}: the load test's own comparison\n\n{comparison_table(results)}\n"
                          for r, results in enumerate(rounds, 1)))
    print(markdown)
    (args.out / "bench_traffic.md").write_text(markdown, encoding="utf-8")
    (args.out / "bench_traffic.json").write_text(json.dumps({"rows": rows, "settings": settings, "floor": floor,
                                                             "in_process": inproc}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
