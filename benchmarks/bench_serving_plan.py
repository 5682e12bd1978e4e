"""The plan_serving step's measurements on an existing build's engine, without rebuilding it. Run on demand.

    .venv/bin/python benchmarks/bench_serving_plan.py artifacts/builds/demo-intent [engineforge/demo/data/eval.jsonl]

Times the engine with and without candidate length buckets on the traffic profile of the texts (the build's
eval data by default), then every threads x instances layout that fits the cores; prints both decisions and the
layout table as plan_serving records them in engine.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engineforge.build.steps.plan_serving import PlanServingConfig, plan_buckets, plan_layout  # noqa: E402
from engineforge.engines import load_engine  # noqa: E402
from engineforge.engines.engine_spec import EngineSpec  # noqa: E402
from engineforge.engines.traffic import profile_from_texts  # noqa: E402


def main(argv: list[str]) -> int:
    from transformers import AutoTokenizer

    bundle = Path(argv[0]) / "engine"
    data = Path(argv[1]) if len(argv) > 1 else ROOT / "engineforge" / "demo" / "data" / "eval.jsonl"
    spec = EngineSpec.load(bundle)
    tokenizer = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines() if line.strip()]
    profile = profile_from_texts(tokenizer, texts, spec.max_sequence_length, str(data))
    path = bundle / spec.model_file

    def open_engine(length_buckets: tuple[int, ...] = (), threads: int | None = None,
                    bucket_max_batch: int = 0) -> object:
        return load_engine(path, spec.runtime, spec.intra_op_threads if threads is None else threads,
                           length_buckets=length_buckets, bucket_max_batch=bucket_max_batch)

    ctx = SimpleNamespace(runtime=spec.runtime, onnx_path=path, vocab_size=spec.vocab_size or len(tokenizer),
                          open_engine=open_engine)
    config = PlanServingConfig()
    print(profile.describe())
    buckets = plan_buckets(ctx, config, profile)
    print("length buckets:", buckets["reason"])
    layout = plan_layout(ctx, config, profile, tuple(buckets["buckets"]), buckets["max_batch"])
    print("| instances x threads | batch-1 p50 ms | batch-1 p99 ms | req/s at 4 callers | batch per instance |")
    print("|---|---:|---:|---:|---:|")
    for row in layout["candidates"]:
        print(f"| {row['instances']} x {row['intra_op_threads']} | {row['batch1_p50_ms']:.2f} | "
              f"{row['batch1_p99_ms']:.2f} | {row['requests_per_s']:.0f} | {row['batch_per_instance']} |")
    print("chosen:", layout["why"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
