"""`build-engine`: thin CLI over engineforge.build.runner.run_build."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from engineforge.errors import EngineforgeError


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build-engine",
        description="Optimize a fine-tuned Hugging Face classifier, validate it against fp32 and publish it to Triton.",
    )
    parser.add_argument("checkpoint", nargs="?", type=Path, help="checkpoint dir (config, weights, tokenizer)")
    parser.add_argument("--output", "-o", type=Path, help="build dir (default artifacts/builds/NAME)")
    parser.add_argument("--eval-data", type=Path, help="labelled eval data (.jsonl/.csv with text,label)")
    parser.add_argument("--train-data", type=Path, help="training text for pruning importance and distillation")
    parser.add_argument("--calibration-data", type=Path, help="representative texts for static int8 calibration")
    parser.add_argument("--unlabelled-data", type=Path,
                        help="unlabelled in-domain text (e.g. logs) that distillation labels with the fp32 model")
    parser.add_argument("--preset",
                        help="fp32, max-accuracy, int8 (default), int8-static, int4-weight-only, nf4, fast-cpu")
    parser.add_argument("--recipe", type=Path, help="TOML recipe describing the whole build")
    parser.add_argument("--repo", help="Triton model repository to publish to (default model_repo)")
    parser.add_argument("--model-name", help="name of the served model (default: checkpoint directory name)")
    parser.add_argument("--no-publish", action="store_true", help="build and validate only")
    parser.add_argument("--max-accuracy-drop", type=float, help="budget: max accuracy drop in points (default 1.0)")
    parser.add_argument("--min-agreement", type=float, help="budget: min argmax agreement with fp32 (default 0.98)")
    parser.add_argument("--max-seq-len", type=int, help="max tokens per text when served (default 128)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    return parser


def candidates_from_args(args: argparse.Namespace) -> list:  # -> list[tuple[str, BuildConfig]]
    """One (name, BuildConfig) per candidate: a recipe or most presets give one, `fast-cpu` several."""
    from .presets import DEFAULT_PRESET, load_recipe, preset_candidates

    if args.recipe and args.preset:
        raise EngineforgeError("give either --recipe or --preset, not both")
    if args.recipe:
        return [(str(args.recipe), config_from_args(args, load_recipe(args.recipe)))]
    preset = args.preset or DEFAULT_PRESET
    return [(name, config_from_args(args, {"preset": preset, "steps": steps}))
            for name, steps in preset_candidates(preset)]


def config_from_args(args: argparse.Namespace, kwargs: dict):  # -> BuildConfig
    from .config import BuildConfig, PublishConfig, ValidateConfig

    kwargs = dict(kwargs)
    checkpoint = args.checkpoint or kwargs.get("checkpoint")
    if checkpoint is None:
        raise EngineforgeError("no checkpoint given: build-engine CHECKPOINT_DIR [--eval-data FILE]")
    kwargs["checkpoint"] = Path(checkpoint)
    kwargs["output_dir"] = args.output or kwargs.get("output_dir") or Path("artifacts/builds") / Path(checkpoint).name
    for flag, key in ((args.eval_data, "eval_data"), (args.train_data, "train_data"),
                      (args.calibration_data, "calibration_data"), (args.unlabelled_data, "unlabelled_data"),
                      (args.max_seq_len, "max_sequence_length"),
                      (args.threads, "intra_op_threads")):
        if flag is not None:
            kwargs[key] = flag
    steps = []
    for step in kwargs["steps"]:
        if isinstance(step, ValidateConfig):
            step = dataclasses.replace(step, **{k: v for k, v in (
                ("max_accuracy_drop", args.max_accuracy_drop), ("min_agreement", args.min_agreement)) if v is not None})
        if isinstance(step, PublishConfig):
            if args.no_publish:
                continue
            step = dataclasses.replace(step, **{k: v for k, v in (
                ("repo_dir", args.repo), ("model_name", args.model_name)) if v is not None})
        steps.append(step)
    kwargs["steps"] = tuple(steps)
    return BuildConfig(overwrite=args.overwrite, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        candidates = candidates_from_args(args)
        config = candidates[0][1]
        from .report import render_markdown
        from .search import run_candidates

        report = run_candidates(candidates)
    except EngineforgeError as exc:
        print(f"build-engine: error: {exc}", file=sys.stderr)
        return 2
    print(render_markdown(report))
    print(f"Reports: {config.output_dir / 'build_report.md'} and build_report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
