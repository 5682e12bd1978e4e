"""`engineforge demo`: the main job on embedded defaults.

fine-tune the packaged MiniLM on the shipped intents (cached) → build-engine (fast-cpu preset: prune,
distil on the shipped train + unlabelled text, calibrated int8, fastest CPU runtime) → publish to
model_repo/ → start Triton → check served answers against the same engine run in-process → closed-loop
gRPC load test → print and write a summary report → stop Triton. `--preset int8` is the 3-minute run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.cli_support import run_command
from engineforge.errors import EngineforgeError, UsageError


@dataclass(frozen=True)
class DemoSettings:
    checkpoint_dir: Path = Path("artifacts/demo-checkpoint")
    build_dir: Path = Path("artifacts/builds/demo-intent")
    repo_dir: Path = Path("model_repo")
    report_dir: Path = Path("reports/demo")
    model_name: str = "intent"
    preset: str = "fast-cpu"
    concurrency: tuple[int, ...] = (1, 4)
    duration_s: float = 15.0
    warmup_s: float = 3.0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="build, serve and load-test the demo intent classifier",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = DemoSettings()
    parser.add_argument("--task", choices=("text-classification", "ner", "embeddings"), default="text-classification",
                        help="text-classification: the intent classifier (default); ner: support-message entities; "
                             "embeddings: the packaged all-MiniLM-L6-v2 sentence embedder")
    parser.add_argument("--preset", help="build preset (default: fast-cpu; int8-static for ner and embeddings)")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds per load level")
    parser.add_argument("--concurrency", default=",".join(map(str, defaults.concurrency)), help="e.g. 1,4")
    parser.add_argument("--repo", type=Path, default=defaults.repo_dir, help="Triton model repository")
    parser.add_argument("--out", type=Path, default=defaults.report_dir, help="report directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_command("engineforge demo", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from engineforge.build.presets import PRESET_NAMES
    from engineforge.loadtest.cli import parse_concurrency

    if args.preset is None:
        args.preset = "int8-static" if args.task in ("ner", "embeddings") else DemoSettings().preset
    if args.preset not in PRESET_NAMES:
        raise UsageError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    if args.preset.startswith("trt-"):
        from engineforge.engines.tensorrt_api import current_gpu

        if current_gpu() is None:
            raise UsageError(f"the demo serves its engine here, and a {args.preset} engine runs on an NVIDIA GPU only: "
                             f"build it here with `build-engine CKPT --preset {args.preset}`, or run "
                             "`bash benchmarks/gpu_check.sh` on a GPU machine")
    try:
        concurrency = parse_concurrency(args.concurrency)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--concurrency: {exc}") from exc
    if args.task == "ner":
        from .ner_demo import NerDemoSettings, run_ner_demo

        out = args.out if args.out != DemoSettings().report_dir else NerDemoSettings().report_dir
        print(run_ner_demo(NerDemoSettings(preset=args.preset, duration_s=args.duration, repo_dir=args.repo,
                                           report_dir=out, concurrency=concurrency))["markdown"])
        return 0
    if args.task == "embeddings":
        from .embeddings import EmbeddingDemoSettings, run_embedding_demo

        out = args.out if args.out != DemoSettings().report_dir else EmbeddingDemoSettings().report_dir
        print(run_embedding_demo(EmbeddingDemoSettings(preset=args.preset, duration_s=args.duration,
                                                       repo_dir=args.repo, report_dir=out,
                                                       concurrency=concurrency))["markdown"])
        return 0
    settings = dataclasses.replace(DemoSettings(), preset=args.preset, duration_s=args.duration, repo_dir=args.repo,
                                   report_dir=args.out, concurrency=concurrency)
    print(run_demo(settings)["markdown"])
    return 0


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    from engineforge.build.config import BuildConfig
    from engineforge.build.presets import preset_candidates
    from engineforge.build.search import run_candidates
    from engineforge.build.steps import PublishConfig
    from engineforge.loadtest.config import LoadTestConfig
    from engineforge.loadtest.report import markdown_table, write_reports
    from engineforge.loadtest.runner import run_loadtest
    from engineforge.serve.server import TritonServer

    from .finetune import EVAL_FILE, TRAIN_FILE, UNLABELLED_FILE, prepare_demo_checkpoint

    with progress.stage("demo 1/4: demo checkpoint"):
        training = prepare_demo_checkpoint(settings.checkpoint_dir)
    candidates = [(name, BuildConfig(
        checkpoint=settings.checkpoint_dir, output_dir=settings.build_dir, eval_data=EVAL_FILE,
        train_data=TRAIN_FILE, calibration_data=TRAIN_FILE, unlabelled_data=UNLABELLED_FILE,
        overwrite=True, preset=settings.preset,
        steps=tuple(dataclasses.replace(s, repo_dir=str(settings.repo_dir), model_name=settings.model_name)
                    if isinstance(s, PublishConfig) else s for s in steps),
    )) for name, steps in preset_candidates(settings.preset)]
    with progress.stage("demo 2/4: build-engine"):
        build = run_candidates(candidates)
    texts = [json.loads(line)["text"] for line in EVAL_FILE.read_text().splitlines() if line.strip()]
    settings.report_dir.mkdir(parents=True, exist_ok=True)
    server = TritonServer(settings.repo_dir, log_file=settings.report_dir / "tritonserver.log")
    with progress.stage("demo 3/4: start Triton"):
        server.start()
    try:
        samples = check_served_answers(server.grpc_url, settings.model_name, Path(str(build.bundle_dir)), texts[:8])
        with progress.stage("demo 4/4: load test"):
            load = run_loadtest(LoadTestConfig(
                model=settings.model_name, url=server.grpc_url, mode="text", concurrency=settings.concurrency,
                duration_s=settings.duration_s, warmup_s=settings.warmup_s, texts=tuple(texts),
                texts_source=str(EVAL_FILE), label=settings.preset,
            ))
            paths = write_reports(load, settings.report_dir, stem="loadtest")
    finally:
        server.stop()
    summary = {"training": training, "build": build.to_dict(), "samples": samples, "loadtest_reports": {
        k: str(v) for k, v in paths.items()}}
    summary["markdown"] = render_summary(summary, markdown_table(load))
    (settings.report_dir / "summary.md").write_text(summary["markdown"])
    (settings.report_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    progress.info(f"demo reports in {settings.report_dir}/ (summary.md, loadtest.md/.json/.png)")
    return summary


def check_served_answers(url: str, model: str, bundle: Path, texts: list[str]) -> list[dict[str, Any]]:
    """Classify over gRPC and in-process with the same bundle, opened the way the served engine model opens
    it (same runtime, same settings); they must agree."""
    import numpy as np

    from engineforge.defaults import TOKENIZER_DIRNAME
    from engineforge.engines import engine_logits
    from engineforge.serve.client import EngineforgeClient
    from engineforge.serve.engine_runtime import open_bundle_engine, softmax
    from engineforge.serve.engine_spec import EngineSpec
    from engineforge.serve.tokenize_runtime import load_tokenizer

    spec = EngineSpec.load(bundle)
    tokenizer = load_tokenizer(bundle / TOKENIZER_DIRNAME)
    engine = open_bundle_engine(bundle, spec)
    local = softmax(engine_logits(engine, tokenizer, texts, spec.max_sequence_length))
    with EngineforgeClient(url) as client:
        served = client.classify(texts, model=model)
    rows = []
    for text, prediction, probs in zip(texts, served, local, strict=True):
        served_probs = np.array([prediction.probabilities[label] for label in spec.labels])
        diff = float(np.abs(served_probs - probs).max())
        if prediction.label != spec.labels[int(probs.argmax())] or diff > 1e-4:
            raise EngineforgeError(f"served answer differs from in-process {spec.runtime} for {text!r}: "
                                   f"{prediction.label} vs {spec.labels[int(probs.argmax())]}, max |Δp| {diff:.2g}")
        rows.append({"text": text, "label": prediction.label, "confidence": round(float(probs.max()), 4),
                     "max_prob_diff_vs_in_process": diff})
    return rows


def render_summary(summary: dict[str, Any], load_table: str) -> str:
    training, build = summary["training"], summary["build"]
    val = build["validation"]
    sizes = build["sizes_mb"]
    lines = [
        "# engineforge demo",
        "",
        f"Model: all-MiniLM-L6-v2 fine-tuned on {training['train_examples']} customer-support messages "
        f"({len(training['labels'])} intents), eval set {training['eval_examples']} messages.",
        "",
        "## Build",
        "",
        "| | fp32 PyTorch | engine |",
        "|---|---|---|",
        f"| eval accuracy | {val['reference_accuracy']:.2f} % | {val['engine_accuracy']:.2f} % |",
        f"| argmax agreement with fp32 | – | {val['agreement']:.2%} |",
        f"| model file | {sizes.get('checkpoint weights')} MB | {sizes.get('engine (published)')} MB |",
        "",
        f"Budget: accuracy drop ≤ {val['budget']['max_accuracy_drop']} points, argmax agreement ≥ "
        f"{val['budget']['min_agreement']:.0%}.",
        "",
        f"Steps {' → '.join(s['name'] for s in build['steps'])}; precision {build['precision']} in "
        f"{build['runtime']}; build time {build['total_seconds']:.1f} s; published "
        f"`{build['published']['model_name']}` version {build['published']['version']}.",
        "",
        "## Served over gRPC (Triton ensemble: tokenizer → engine)",
        "",
        "| text | label | confidence |",
        "|---|---|---|",
    ]
    lines += [f"| {row['text'][:60]} | {row['label']} | {row['confidence']:.3f} |" for row in summary["samples"]]
    lines += ["", f"Served probabilities equal the same engine run in-process in {build['runtime']} (max |Δp| "
              f"{max(r['max_prob_diff_vs_in_process'] for r in summary['samples']):.1e}).", "",
              "## Load test (closed loop, raw text over gRPC)", "", load_table, ""]
    return "\n".join(lines)
