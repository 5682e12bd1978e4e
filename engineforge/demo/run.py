"""`engineforge demo`: the main job on embedded defaults.

fine-tune the packaged MiniLM on the shipped intents (cached) → build-engine (fast-cpu preset: prune,
distil on the shipped train + unlabelled text, calibrated int8, fastest CPU runtime) → publish to
model_repo/ → start Triton → check served answers against the same engine run in-process → closed-loop
gRPC load test → print and write a summary report → stop Triton → print the commands that serve and query
what it built. `--keep-serving` then runs `engineforge serve --repo model_repo` in the foreground (supervised, on
the default ports, until Ctrl-C) instead. `--preset int8` is the 3-minute run.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.cli_support import run_command
from engineforge.engines.engine_spec import EMBEDDINGS, TEXT_CLASSIFICATION
from engineforge.errors import EngineforgeError, UsageError

# What the demo's last lines suggest sending to the model it built, per --task.
QUERY_EXAMPLES = {TEXT_CLASSIFICATION: "where is my parcel? it was due on monday",
                  "ner": "the blue hoodie from order 44019 still hasn't arrived",
                  EMBEDDINGS: "where is my parcel?", "generation": "How long does a refund take?"}


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
    parser.add_argument("--task", choices=tuple(QUERY_EXAMPLES), default=TEXT_CLASSIFICATION,
                        help="text-classification: the intent classifier (default); ner: support-message entities; "
                             "embeddings: the packaged all-MiniLM-L6-v2 sentence embedder; generation: SmolLM2-135M-"
                             "Instruct (GGUF) streaming answers")
    parser.add_argument("--preset", help="build preset (default: fast-cpu; int8-static for ner and embeddings)")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds per load level")
    parser.add_argument("--concurrency", default=",".join(map(str, defaults.concurrency)), help="e.g. 1,4")
    parser.add_argument("--repo", type=Path, default=defaults.repo_dir, help="Triton model repository")
    parser.add_argument("--out", type=Path, default=defaults.report_dir, help="report directory")
    parser.add_argument("--no-finetune", dest="finetune", action="store_false",
                        help="generation: build the instruct model as is (default: a brief fine-tune on the shipped "
                             "support answers first, cached)")
    parser.add_argument("--keep-serving", action="store_true",
                        help="after the report, serve the repository as `engineforge serve` does (gRPC "
                             "127.0.0.1:8001) until Ctrl-C, to query it with `engineforge infer`")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_command("engineforge demo", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from engineforge.build.presets import PRESET_NAMES
    from engineforge.loadtest.config import parse_concurrency

    if args.task == "generation":
        return _run_generation(args)
    if args.preset is None:
        args.preset = "int8-static" if args.task in ("ner", EMBEDDINGS) else DemoSettings().preset
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
    from .flow import keep_serving, next_steps

    if args.task == "ner":
        from .ner_demo import NerDemoSettings, run_ner_demo

        out = args.out if args.out != DemoSettings().report_dir else NerDemoSettings().report_dir
        settings: Any = NerDemoSettings(preset=args.preset, duration_s=args.duration, repo_dir=args.repo,
                                        report_dir=out, concurrency=concurrency)
        summary = run_ner_demo(settings)
    elif args.task == EMBEDDINGS:
        from .embeddings import EmbeddingDemoSettings, run_embedding_demo

        out = args.out if args.out != DemoSettings().report_dir else EmbeddingDemoSettings().report_dir
        settings = EmbeddingDemoSettings(preset=args.preset, duration_s=args.duration, repo_dir=args.repo,
                                         report_dir=out, concurrency=concurrency)
        summary = run_embedding_demo(settings)
    else:
        settings = dataclasses.replace(DemoSettings(), preset=args.preset, duration_s=args.duration,
                                       repo_dir=args.repo, report_dir=args.out, concurrency=concurrency)
        summary = run_demo(settings)
    print(summary["markdown"])
    print(next_steps(settings.repo_dir, settings.model_name, QUERY_EXAMPLES[args.task], args.keep_serving),
          flush=True)
    return keep_serving(settings.repo_dir) if args.keep_serving else 0


def _run_generation(args: argparse.Namespace) -> int:
    from engineforge.build.lm.presets import DEFAULT_LM_PRESET, LM_PRESET_NAMES
    from engineforge.loadtest.config import parse_concurrency

    from .flow import program
    from .generation import GenerationDemoSettings, run_generation_demo

    preset = args.preset or DEFAULT_LM_PRESET
    if preset not in LM_PRESET_NAMES:
        raise UsageError(f"--task generation builds a decoder LM: --preset one of {', '.join(LM_PRESET_NAMES)}")
    try:
        concurrency = parse_concurrency(args.concurrency)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--concurrency: {exc}") from exc
    out = args.out if args.out != DemoSettings().report_dir else GenerationDemoSettings().report_dir
    settings = GenerationDemoSettings(preset=preset, duration_s=args.duration, repo_dir=args.repo, report_dir=out,
                                      concurrency=concurrency, finetune=args.finetune)
    summary = run_generation_demo(settings)
    print(summary["markdown"])
    print(f"Serve it: {program()} serve --repo {settings.repo_dir}; then: {program()} generate --model "
          f"{settings.model_name} --stream \"{QUERY_EXAMPLES['generation']}\"", flush=True)
    from .flow import keep_serving

    return keep_serving(settings.repo_dir) if args.keep_serving else 0


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    from .finetune import EVAL_FILE, TRAIN_FILE, UNLABELLED_FILE, prepare_demo_checkpoint
    from .flow import build_and_publish, serve_check_and_load, write_summary

    with progress.stage("demo 1/4: demo checkpoint"):
        training = prepare_demo_checkpoint(settings.checkpoint_dir)
    with progress.stage("demo 2/4: build-engine"):
        build = build_and_publish(settings, settings.checkpoint_dir, eval_data=EVAL_FILE, train_data=TRAIN_FILE,
                                 calibration_data=TRAIN_FILE, unlabelled_data=UNLABELLED_FILE)
    samples, load, paths = serve_check_and_load(settings, build, EVAL_FILE, check_served_answers, 8, "demo 3/4:")
    summary = {"training": training, "build": build.to_dict(), "samples": samples, "loadtest_reports": paths}
    return write_summary(settings, summary, render_summary, load)


def check_served_answers(url: str, model: str, bundle: Path, texts: list[str]) -> list[dict[str, Any]]:
    """Classify over gRPC and in-process with the same bundle, opened the way the served engine model opens
    it (same runtime, same settings); they must agree."""
    import numpy as np

    from engineforge.defaults import TOKENIZER_DIRNAME
    from engineforge.engines import engine_logits
    from engineforge.engines.engine_spec import EngineSpec
    from engineforge.engines.tokenize_runtime import load_tokenizer
    from engineforge.serve.client import EngineforgeClient
    from engineforge.serve.engine_runtime import open_bundle_engine, softmax

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
    if "correct %" in load_table:
        lines += ["`correct %`: served answers whose label equals the eval set's (every answer checked, apart from "
                  "latency); compare the engine's eval accuracy above.", ""]
    return "\n".join(lines)
