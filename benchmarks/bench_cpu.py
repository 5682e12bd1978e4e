"""CPU benchmark: engineforge presets vs the peers, on the demo checkpoint. Run on demand, not in tests.

    .venv/bin/python benchmarks/bench_cpu.py [--presets int8,fast-cpu] [--iterations 100] [--reuse-builds]

Measures, same machine, same threads: PyTorch fp32 eager; ONNX Runtime fp32 (fused); ONNX Runtime
dynamic int8 per-channel of the unpruned model (what Optimum's dynamic quantizer gives); OpenVINO fp32
and int8 (symmetric static Q/DQ) of the unpruned model (what optimum-intel gives); each engineforge
preset. For each: eval accuracy, argmax agreement with fp32, model size, and median / p99 latency at
batch 1 and 8 × seq 32 and 128, all engines timed in interleaved rounds (machine-load drift on these
shared 2-core machines reaches 15 % between minutes; interleaving makes the ratios trustworthy).
Writes benchmarks/results/cpu.{md,json,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHAPES = ((1, 32), (1, 128), (8, 32), (8, 128))


@dataclasses.dataclass
class Engine:
    name: str
    kind: str  # "peer" or "engineforge"
    runtime: str  # onnxruntime | openvino | torch | torch-bnb
    path: Path | None  # ONNX file (None for torch)
    model: Any = None  # torch model for torch runtimes
    size_mb: float | None = None
    note: str = ""


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from engineforge.build.report import package_versions

    return {"cpu": cpu, "cores": os.cpu_count(), "threads": 2, "python": platform.python_version(),
            "versions": package_versions(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def build_preset(preset: str, checkpoint: Path, eval_file: Path, train_file: Path,
                 unlabelled_file: Path) -> dict[str, Any]:
    """Build a preset exactly as `build-engine --preset` does (budget search included), without publishing."""
    from engineforge.build.config import BuildConfig, PublishConfig
    from engineforge.build.presets import preset_candidates
    from engineforge.build.search import run_candidates

    out = ROOT / "artifacts" / "bench" / preset
    return run_candidates([
        (name, BuildConfig(checkpoint=checkpoint, output_dir=out, eval_data=eval_file, train_data=train_file,
                           calibration_data=train_file, unlabelled_data=unlabelled_file, overwrite=True, preset=preset,
                           steps=tuple(s for s in steps if not isinstance(s, PublishConfig))))
        for name, steps in preset_candidates(preset)
    ])


def make_runner(engine: Engine, threads: int):
    import numpy as np

    from engineforge.build.runtimes import make_runner as runtime_runner

    if engine.runtime in ("torch", "torch-bnb"):
        import torch

        torch.set_num_threads(threads)

        def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                return engine.model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.float().numpy()

        return run, ["input_ids", "attention_mask", "token_type_ids"]
    return runtime_runner(engine.runtime, engine.path, threads)


def evaluate(engine: Engine, runner: Any, names: list[str], tokenizer: Any, texts: list[str], labels: list[int],
             reference: Any) -> tuple[dict[str, Any], Any]:
    """Accuracy and agreement on the eval texts (latency is measured for all engines together)."""
    import numpy as np

    from engineforge.build.data import batches, encode

    logits = np.concatenate([runner(encode(tokenizer, chunk, 128, names)) for chunk in batches(texts, 32)])
    predictions = logits.argmax(axis=1)
    row: dict[str, Any] = {
        "engine": engine.name, "kind": engine.kind, "runtime": engine.runtime, "size_mb": engine.size_mb,
        "accuracy": round(float((predictions == np.array(labels)).mean() * 100), 2),
        "agreement": None if reference is None else round(float((predictions == reference).mean()), 4),
        "note": engine.note, "latency": {},
    }
    return row, predictions


def time_all(engines: list[Engine], runners: list[tuple[Any, list[str]]], rows: list[dict[str, Any]],
             iterations: int) -> None:
    """Every shape, all engines interleaved round by round: machine-load drift hits every engine alike."""
    from engineforge.build.runtimes import measure_latencies

    for batch, seq in SHAPES:
        per_engine = measure_latencies({e.name: r for e, r in zip(engines, runners, strict=True)}, batch, seq,
                                       iterations=iterations, per_round=max(1, iterations // 20))
        for engine, row in zip(engines, rows, strict=True):
            lat = per_engine[engine.name]
            row["latency"][f"{batch}x{seq}"] = lat.to_dict()
            print(f"  {engine.name}: {batch}x{seq} median {lat.median_ms:.2f} ms p99 {lat.p99_ms:.2f} ms",
                  file=sys.stderr, flush=True)


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 3's latency targets at 1x128: <= 1/5 of PyTorch eager and <= 2/3 of the fastest int8 peer."""
    def median(row: dict[str, Any]) -> float:
        return row["latency"]["1x128"]["median_ms"]

    eager = next(r for r in rows if r["engine"] == "PyTorch fp32 eager")
    peer = min((r for r in rows if r["kind"] == "peer" and "int8" in r["engine"]), key=median)
    return {"eager_ms": median(eager), "eager_target_ms": round(median(eager) / 5, 2), "peer": peer["engine"],
            "peer_ms": median(peer), "peer_target_ms": round(median(peer) * 2 / 3, 2)}


def render(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    base = next(r for r in rows if r["engine"] == "PyTorch fp32 eager")["latency"]["1x128"]["median_ms"]
    lines = ["# CPU benchmark: demo intent classifier (MiniLM-L6, 8 labels)", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, {info['threads']} threads per engine; "
             f"{info['date_utc']} UTC. Latency = median / p99 ms of repeated calls, synthetic token ids.", "",
             "| engine | runtime | acc % | agree | MB | 1×32 | 1×128 | 8×32 | 8×128 | speed-up 1×128 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r['latency'][f'{b}x{s}']['median_ms']:.2f} / {r['latency'][f'{b}x{s}']['p99_ms']:.1f}"
                 for b, s in SHAPES]
        agree = "–" if r["agreement"] is None else f"{r['agreement']:.2%}"
        speedup = base / r["latency"]["1x128"]["median_ms"]
        lines.append(f"| {r['engine']} | {r['runtime']} | {r['accuracy']:.2f} | {agree} | {r['size_mb']} | "
                     + " | ".join(cells) + f" | {speedup:.2f}× |")
    notes = [f"- {r['engine']}: {r['note']}" for r in rows if r["note"]]
    goal = targets(rows)
    goals = ["", f"Latency targets at 1×128: at most 1/5 of PyTorch eager ({goal['eager_target_ms']} ms) and at most "
                 f"2/3 of the fastest int8 peer, {goal['peer']} ({goal['peer_target_ms']} ms)."]
    return "\n".join([*lines, *goals, *(["", *notes] if notes else []), ""])


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 0.45 * len(rows) + 1.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names = [r["engine"] for r in rows][::-1]
    values = [r["latency"]["1x128"]["median_ms"] for r in rows][::-1]
    colors = ["tab:orange" if r["kind"] == "engineforge" else "tab:gray" for r in rows][::-1]
    ax.barh(names, values, color=colors)
    for y, (v, r) in enumerate(zip(values, rows[::-1], strict=True)):
        ax.text(v, y, f" {v:.1f} ms, acc {r['accuracy']:.1f}%", va="center", fontsize=8)
    goal = targets(rows)
    ax.axvline(min(goal["eager_target_ms"], goal["peer_target_ms"]), color="tab:green", linestyle="--",
               label="latency target (≤ eager / 5 and ≤ 2/3 of the fastest int8 peer)")
    ax.set_xlim(0, max(values) * 1.45)  # room for the bar labels and the legend
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("median latency, batch 1 × 128 tokens (ms)")
    ax.set_title("engineforge presets (orange) vs peers (gray), 2 CPU threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="int8,fast-cpu", help="engineforge presets to build and measure")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse-builds", action="store_true",
                        help="time the preset builds already under artifacts/bench/ instead of rebuilding them")
    args = parser.parse_args(argv)

    from peers import build_peers  # benchmarks/peers.py

    from engineforge.build.checkpoint import load_checkpoint
    from engineforge.build.data import load_examples
    from engineforge.demo.finetune import EVAL_FILE, TRAIN_FILE, UNLABELLED_FILE, prepare_demo_checkpoint

    checkpoint = ROOT / "artifacts" / "demo-checkpoint"
    prepare_demo_checkpoint(checkpoint)
    info, model, tokenizer = load_checkpoint(checkpoint)
    examples = load_examples(EVAL_FILE, info.labels)
    texts, labels = [e.text for e in examples], [info.labels.index(e.label) for e in examples]

    engines = build_peers(model, checkpoint, EVAL_FILE, TRAIN_FILE, ROOT / "artifacts" / "bench" / "peers")
    for preset in [p for p in args.presets.split(",") if p]:
        previous = ROOT / "artifacts" / "bench" / preset / "build_report.json"
        report = json.loads(previous.read_text()) if args.reuse_builds and previous.is_file() else None
        if report is not None and report["status"] == "ok":
            report["candidates"] = json.loads(previous.with_name("candidates.json").read_text()) \
                if previous.with_name("candidates.json").is_file() else []
        else:
            report = build_preset(preset, checkpoint, EVAL_FILE, TRAIN_FILE, UNLABELLED_FILE)
        bundle = Path(report["bundle_dir"])
        spec = json.loads((bundle / "engine.json").read_text())
        chosen = next((c["candidate"] for c in report.get("candidates", []) if c["result"] == "chosen"), preset)
        engine = Engine(f"engineforge {preset}", "engineforge", spec["runtime"], bundle / spec["model_file"],
                        size_mb=report["sizes_mb"].get("engine (published)"),
                        note=f"{spec['precision']} in {spec['runtime']}; candidate: {chosen}")
        if spec["runtime"] == "torch-bnb":
            from transformers import AutoModelForSequenceClassification

            engine.model = AutoModelForSequenceClassification.from_pretrained(str(bundle / "model"),
                                                                               device_map="cpu").eval()
        engines.append(engine)

    rows, reference = [], None
    runners = [make_runner(engine, args.threads) for engine in engines]
    for engine, (runner, names) in zip(engines, runners, strict=True):
        row, predictions = evaluate(engine, runner, names, tokenizer, texts, labels, reference)
        if reference is None:  # the first engine is PyTorch fp32: everything else agrees with it or not
            reference = predictions
        rows.append(row)
    time_all(engines, runners, rows, args.iterations)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = machine()
    (RESULTS / "cpu.json").write_text(json.dumps({"machine": meta, "rows": rows}, indent=2) + "\n")
    markdown = render(rows, meta)
    (RESULTS / "cpu.md").write_text(markdown)
    plot(rows, RESULTS / "cpu.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
