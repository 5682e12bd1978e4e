"""What a change of input shape costs an engine: one length on every call vs lengths that change call to call
(as served text does). Run on demand.

    .venv/bin/python benchmarks/bench_shape_changes.py artifacts/builds/intent-fast-cpu artifacts/builds/intent-int8

For each build's engine: median latency at batch 1 of 200 calls at a fixed length, then 200 calls cycling through
10 lengths (12..30 tokens, the demo's messages), twice in turn; and fixed 32 vs alternating 16/32, which is what
padding to length buckets would give. Prints a Markdown table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engineforge.engines import load_engine  # noqa: E402
from engineforge.engines.engine_spec import EngineSpec  # noqa: E402
from engineforge.engines.timing import synthetic_feeds  # noqa: E402
from engineforge.stats import median  # noqa: E402

CALLS = 200


def median_ms(engine, feeds: list[dict]) -> float:
    times = []
    for k in range(CALLS):
        start = time.perf_counter()
        engine.run(feeds[k % len(feeds)])
        times.append((time.perf_counter() - start) * 1000)
    return median(times)


def main(argv: list[str]) -> int:
    rows = ["| build | runtime | fixed 20 | cycling 12..30 | fixed 32 | alternating 16/32 |",
            "|---|---|---:|---:|---:|---:|"]
    for build in argv:
        bundle = Path(build) / "engine"
        spec = EngineSpec.load(bundle)
        engine = load_engine(bundle / spec.model_file, spec.runtime, spec.intra_op_threads)
        feeds = {n: synthetic_feeds(engine.input_names, 1, n, spec.vocab_size or 30522) for n in range(12, 34, 2)}
        cases = {"fixed 20": [feeds[20]], "cycling": [feeds[n] for n in range(12, 32, 2)], "fixed 32": [feeds[32]],
                 "alternating": [feeds[16], feeds[32]]}
        for case in cases.values():  # warm every shape
            median_ms(engine, case)
        best = {name: min(median_ms(engine, case) for _ in range(2)) for name, case in cases.items()}
        rows.append(f"| {build} | {spec.runtime} | " + " | ".join(f"{v:.2f}" for v in best.values()) + " |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
