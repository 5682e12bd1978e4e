"""`build-engine`: thin CLI over the one build entry (engineforge.commands.build_engine): arguments in, report out.

Exit codes: 0 built; 1 the build failed (checkpoint, data, budget...); 2 usage error (the command line or
recipe asks for something impossible, refused before any work).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engineforge.cli_support import arguments_checked, enable_debug, run_command
from engineforge.errors import UsageError


def make_parser() -> argparse.ArgumentParser:
    from engineforge.build.lm.presets import DEFAULT_LM_PRESET, LM_PRESET_NAMES
    from engineforge.engines.engine_spec import TASKS
    from engineforge.lm.bundle import TEXT_GENERATION

    from .accuracy import DEFAULT_BUDGET
    from .presets import DEFAULT_PRESET, PRESET_NAMES

    parser = argparse.ArgumentParser(
        prog="build-engine",
        description="Optimize a fine-tuned Hugging Face classifier, validate it against fp32 and publish it to Triton. "
        "A causal LM (*ForCausalLM directory or .gguf) is built with an lm-* preset and judged by perplexity and "
        "greedy agreement with fp32.",
    )
    parser.add_argument("checkpoint", nargs="?", type=Path, help="checkpoint dir (config, weights, tokenizer)")
    parser.add_argument("--output", "-o", type=Path, help="build dir (default artifacts/builds/NAME)")
    parser.add_argument("--eval-data", type=Path, help="labelled eval data (.jsonl/.csv with text,label); for a causal "
                        "LM, JSONL rows {\"text\": ...} (perplexity) and {\"prompt\": ..., \"completion\": ...} "
                        "(greedy agreement; completion optional)")
    parser.add_argument("--train-data", type=Path, help="training text for pruning importance and distillation")
    parser.add_argument("--calibration-data", type=Path, help="representative texts for static int8 calibration")
    parser.add_argument("--unlabelled-data", type=Path,
                        help="unlabelled in-domain text (e.g. logs) that distillation labels with the fp32 model")
    parser.add_argument("--traffic-data", type=Path,
                        help="real requests (.jsonl/.csv with a 'text' column, labels not needed): runtimes are timed "
                        "on their token lengths (default: the eval texts)")
    parser.add_argument("--preset", help=", ".join(f"{name} (default)" if name == DEFAULT_PRESET else name
                                                   for name in PRESET_NAMES)
                        + "; decoder LMs: " + ", ".join(f"{name} (default)" if name == DEFAULT_LM_PRESET else name
                                                         for name in LM_PRESET_NAMES))
    parser.add_argument("--recipe", type=Path, help="TOML recipe describing the whole build")
    parser.add_argument("--repo", help="Triton model repository to publish to (default model_repo)")
    parser.add_argument("--model-name", help="name of the served model (default: checkpoint directory name)")
    parser.add_argument("--no-publish", action="store_true", help="build and validate only")
    parser.add_argument("--long-texts", choices=("truncate", "refuse"),
                        help="served texts longer than the model reads: answer on their first tokens (truncate, "
                        "default) or refuse them with INVALID_ARGUMENT")
    parser.add_argument("--text-path", choices=("one-hop", "two-hop"),
                        help="how served text reaches the engine: the engine model tokenizes it (one-hop, default) "
                        "or a tokenizer model hands it token ids (two-hop, the older layout)")
    parser.add_argument("--max-accuracy-drop", type=float,
                        help=f"budget: max accuracy drop in points (default {DEFAULT_BUDGET.max_accuracy_drop})")
    parser.add_argument("--min-agreement", type=float,
                        help=f"budget: min argmax agreement with fp32 (default {DEFAULT_BUDGET.min_agreement})")
    parser.add_argument("--max-ppl-increase", type=float,
                        help="decoder-LM budget: max perplexity increase over fp32 in percent, for every precision "
                        "(default fp32 1, int8 3, int4 8, nf4 8)")
    parser.add_argument("--max-seq-len", type=int, help="max tokens per text when served (default 128)")
    parser.add_argument("--threads", type=int, help="engine runtime intra-op threads (default 2)")
    parser.add_argument("--max-build-minutes", type=float,
                        help="wall-clock limit of the whole build (a preset's whole ladder): candidates estimated past "
                        "the time left are skipped, a running distillation stops at its next step, and a build that "
                        "chose nothing in time fails naming the candidate closest to the budget")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    parser.add_argument("--task", choices=(*TASKS, TEXT_GENERATION),
                        help="what the checkpoint is for (default: read from its architecture and files)")
    parser.add_argument("--debug", action="store_true", help="print the traceback after an error")
    return parser


def prepared_from_args(args: argparse.Namespace) -> Any:  # -> engineforge.commands.build_engine.PreparedBuild
    """The checked candidates the arguments ask for: a recipe or most presets give one, `fast-cpu` several. Every
    candidate is checked (order, prerequisites, registration, TensorRT) here, so an impossible build is a usage
    error (a missing TensorRT stays a build failure, exit 1)."""
    from engineforge.commands.build_engine import prepare_build

    if args.recipe and args.preset:
        raise UsageError("give either --recipe or --preset, not both")
    with arguments_checked():
        return prepare_build(
            args.checkpoint, preset=None if args.recipe else args.preset, recipe=args.recipe, output_dir=args.output,
            data={"eval_data": args.eval_data, "train_data": args.train_data,
                  "calibration_data": args.calibration_data, "unlabelled_data": args.unlabelled_data,
                  "traffic_data": args.traffic_data},
            budget={"max_accuracy_drop": args.max_accuracy_drop, "min_agreement": args.min_agreement,
                    "max_ppl_increase": args.max_ppl_increase},
            publish=False if args.no_publish else {"repo_dir": args.repo, "model_name": args.model_name,
                                                   "long_texts": args.long_texts, "text_path": args.text_path},
            overwrite=args.overwrite, max_sequence_length=args.max_seq_len, intra_op_threads=args.threads,
            task=args.task, max_build_minutes=args.max_build_minutes)


def build(args: argparse.Namespace) -> int:
    prepared = prepared_from_args(args)
    report = prepared.run()
    print(report.to_markdown())
    print(f"Reports: {prepared.output_dir / 'build_report.md'} and build_report.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.debug:
        enable_debug()
    return run_command("build-engine", lambda: build(args))


if __name__ == "__main__":
    sys.exit(main())
