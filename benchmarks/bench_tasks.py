"""Engine bundles of any task side by side: size and latency at 1x128, interleaved, on this machine.

    .venv/bin/python benchmarks/bench_tasks.py BUILD_DIR [BUILD_DIR ...] [--iterations 200]

Each BUILD_DIR is a build-engine output directory (its engine/ bundle is timed in the runtime engine.json
names, with the served settings; its work/model.fp32.onnx, when present, in ONNX Runtime as the fp32
reference). All engines are timed round-robin in one process (engineforge.engines.measure_latencies), so a
busy moment hits them alike. Prints a Markdown table with the quality figures from each build report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engineforge.engines import load_engine, measure_latencies  # noqa: E402
from engineforge.engines.engine_spec import EngineSpec  # noqa: E402


def quality(validation: dict) -> str:
    if "cosine_mean" in validation:
        return (f"cosine {validation['cosine_mean']:.4f} / worst {validation['cosine_worst']:.4f}, recall@10 "
                f"{validation['reference_recall']:.1f} → {validation['engine_recall']:.1f} %")
    if "f1_vs_reference" in validation:
        return (f"entity F1 {validation['reference_f1']:.2f} → {validation['engine_f1']:.2f}, token agreement "
                f"{validation['agreement']:.2%}")
    return (f"accuracy {validation['reference_accuracy']:.2f} → {validation['engine_accuracy']:.2f} %, agreement "
            f"{validation['agreement']:.2%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", type=Path)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args(argv)
    engines, rows = {}, []
    for build in args.builds:
        spec = EngineSpec.load(build / "engine")
        report = json.loads((build / "build_report.json").read_text())
        name = build.name
        engines[name] = load_engine(build / "engine" / spec.model_file, spec.runtime, spec.intra_op_threads,
                                    length_buckets=spec.length_buckets,
                                    bucket_max_batch=spec.bucket_max_batch)  # as served
        fp32 = build / "work" / "model.fp32.onnx"
        if fp32.is_file():
            engines[f"{name} fp32 (ORT)"] = load_engine(fp32, "onnxruntime", spec.intra_op_threads)
        rows.append((name, spec, report))
    vocab = min(spec.vocab_size or 30522 for _, spec, _ in rows)
    latencies = measure_latencies(engines, vocab, 1, 128, args.iterations)
    lines = ["| build | task | preset | runtime | MB | 1x128 median ms | fp32 ORT ms | quality (fp32 → engine) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, spec, report in rows:
        fp32 = latencies.get(f"{name} fp32 (ORT)")
        lines.append(f"| {name} | {spec.task} | {report.get('preset') or 'recipe'} | {spec.runtime} | "
                     f"{report['sizes_mb'].get('engine (published)')} | {latencies[name].median_ms:.2f} | "
                     f"{f'{fp32.median_ms:.2f}' if fp32 else '-'} | {quality(report['validation'])} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
