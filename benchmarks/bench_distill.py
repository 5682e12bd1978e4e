"""Which text recovers a pruned student: the demo's labelled train set alone vs plus unlabelled text.

    .venv/bin/python benchmarks/bench_distill.py [--variants train,train+unlabelled] [--epochs 8]

Prunes the demo checkpoint (50 % heads, 50 % FFN) and distils it with each variant; prints the fp32
student's eval accuracy and argmax agreement with the teacher (before any quantization). Each variant is
one pruning + one distillation, about 1 min (train) to 6 min (train + unlabelled, hidden-state loss).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (unlabelled text?, hidden_weight)
    "train": (False, 0.0),
    "train+hidden": (False, 1.0),
    "train+unlabelled": (True, 0.0),
    "train+unlabelled+hidden": (True, 1.0),
}


def run_variant(name: str, epochs: int) -> dict:
    from engineforge.build.checkpoint import load_checkpoint
    from engineforge.build.config import BuildConfig
    from engineforge.build.context import BuildContext
    from engineforge.build.pipeline import run_step
    from engineforge.build.steps import DistillConfig, PruneConfig
    from engineforge.build.teacher_student import agreement_and_kl, make_batches, with_teacher_logits
    from engineforge.data import Example, load_examples
    from engineforge.demo.finetune import EVAL_FILE, TRAIN_FILE, UNLABELLED_FILE, prepare_demo_checkpoint

    unlabelled, hidden_weight = VARIANTS[name]
    checkpoint = ROOT / "artifacts" / "demo-checkpoint"
    prepare_demo_checkpoint(checkpoint)
    info, teacher, tokenizer = load_checkpoint(checkpoint)
    work = ROOT / "artifacts" / "bench" / "distill"
    work.mkdir(parents=True, exist_ok=True)
    config = BuildConfig(checkpoint=checkpoint, output_dir=work, steps=(PruneConfig(),))
    ctx = BuildContext.start(config, work, info, teacher, tokenizer)  # the student is a copy of the teacher
    ctx.train_examples = load_examples(TRAIN_FILE, ctx.labels)
    ctx.eval_examples = load_examples(EVAL_FILE, ctx.labels)
    if unlabelled:
        ctx.unlabelled_examples = [Example(e.text) for e in load_examples(UNLABELLED_FILE)]
    run_step(ctx, PruneConfig(head_sparsity=0.5, ffn_sparsity=0.5))
    details = run_step(ctx, DistillConfig(epochs=epochs, hidden_weight=hidden_weight, patience=0))
    evals = with_teacher_logits(teacher, make_batches(ctx, ctx.eval_examples, 64, 128))
    agreement = agreement_and_kl(ctx.model, evals)["agreement"]
    return {"variant": name, "texts": details["texts"], "epochs": epochs, "seconds": details["train_seconds"],
            "eval_accuracy_before": details["eval_accuracy_before"],
            "eval_accuracy_after": details["eval_accuracy_after"], "agreement": round(100 * agreement, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    rows = [run_variant(name, args.epochs) for name in names]
    print("| text | texts | epochs | s | eval acc before → after | agreement % |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['texts']} | {r['epochs']} | {r['seconds']} | "
              f"{r['eval_accuracy_before']} → {r['eval_accuracy_after']} | {r['agreement']} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
