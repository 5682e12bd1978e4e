"""What a change of input shape costs an engine: one length on every call vs lengths that change call to call
(as served text does), without and with the length buckets the engine is served with. Run on demand.

    .venv/bin/python benchmarks/bench_shape_changes.py artifacts/builds/intent-fast-cpu artifacts/builds/intent-int8
    .venv/bin/python benchmarks/bench_shape_changes.py --buckets=16,24,32,128 artifacts/builds/demo-intent

For each build's engine, opened without buckets and with them (`--buckets`, else engine.json's `length_buckets`,
else the candidates plan_serving would try on the lengths timed here: 24, 32, max_sequence_length), median
latency at batch 1 of 200 calls at a fixed 21 tokens, then 200 calls cycling through 10 lengths (12..30 tokens,
the demo's messages, mean 21), the cases taking turns every 10 calls; and fixed 32 vs alternating 16/32. The
ratio columns are cycling / fixed 21 (the same average length): what lengths changing every call cost, the issue's
target being <= 1.15x. Prints a Markdown table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engineforge.engines import load_engine  # noqa: E402
from engineforge.engines.buckets import candidate_buckets  # noqa: E402
from engineforge.engines.engine_spec import EngineSpec  # noqa: E402
from engineforge.engines.timing import synthetic_feeds  # noqa: E402
from engineforge.engines.traffic import TrafficProfile  # noqa: E402
from engineforge.stats import median  # noqa: E402

CALLS, ROUNDS = 200, 20
CYCLE = tuple(range(12, 32, 2))  # mean 21


def interleaved_medians(cases: dict[str, tuple[object, list[dict]]]) -> dict[str, float]:
    """Median ms per call of each case, the cases taking turns in ROUNDS rounds of CALLS // ROUNDS calls (load from
    elsewhere on a shared machine then hits them alike). Each round starts with a pause and one untimed call, so
    a case's first timed call pays neither for the previous case's shape nor for sleeping threads."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    per_round = CALLS // ROUNDS
    for r in range(ROUNDS):
        for name, (engine, feeds) in cases.items():
            time.sleep(0.02)
            engine.run(feeds[(r * per_round - 1) % len(feeds)])
            for k in range(r * per_round, (r + 1) * per_round):
                start = time.perf_counter()
                engine.run(feeds[k % len(feeds)])
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: median(values) for name, values in times.items()}


def served_buckets(spec: EngineSpec, given: tuple[int, ...]) -> tuple[int, ...]:
    if given:
        return given
    if spec.length_buckets:
        return spec.length_buckets
    return candidate_buckets(TrafficProfile("cycle", CYCLE, spec.max_sequence_length))


def time_build(build: str, given: tuple[int, ...]) -> str:
    bundle = Path(build) / "engine"
    spec = EngineSpec.load(bundle)
    buckets = served_buckets(spec, given)
    engines = {"plain": load_engine(bundle / spec.model_file, spec.runtime, spec.intra_op_threads),
               "buckets": load_engine(bundle / spec.model_file, spec.runtime, spec.intra_op_threads,
                                      length_buckets=buckets)}
    names = engines["plain"].input_names
    feeds = {n: synthetic_feeds(names, 1, n, spec.vocab_size or 30522) for n in (*CYCLE, 16, 21, 32)}
    plain, bucketed = engines["plain"], engines["buckets"]
    cases = {"fixed 21": (plain, [feeds[21]]), "cycling": (plain, [feeds[n] for n in CYCLE]),
             "cycling, buckets": (bucketed, [feeds[n] for n in CYCLE]), "fixed 32": (plain, [feeds[32]]),
             "alternating 16/32": (plain, [feeds[16], feeds[32]])}
    for engine, case in cases.values():  # warm every shape
        for feed in case:
            engine.run(feed)
    best = interleaved_medians(cases)
    ratio, with_buckets = best["cycling"] / best["fixed 21"], best["cycling, buckets"] / best["fixed 21"]
    return (f"| {build} | {spec.runtime} | {list(buckets)} | {best['fixed 21']:.2f} | {best['cycling']:.2f} | "
            f"{ratio:.2f}x | {best['cycling, buckets']:.2f} | {with_buckets:.2f}x | {best['fixed 32']:.2f} | "
            f"{best['alternating 16/32']:.2f} |")


def main(argv: list[str]) -> int:
    rows = ["| build | runtime | buckets | fixed 21 ms | cycling 12..30 ms | cycling / fixed | cycling, buckets ms | "
            "cycling with buckets / fixed | fixed 32 ms | alternating 16/32 ms |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    given = next((tuple(int(n) for n in a.split("=", 1)[1].split(",")) for a in argv if a.startswith("--buckets=")),
                 ())
    rows += [time_build(build, given) for build in argv if not build.startswith("--")]
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
