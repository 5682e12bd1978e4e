"""Every family × task × preset through `build-engine`, as a new user would run it: which builds succeed, which are
refused (and with what message), which fail. Run on demand (about an hour for the full matrix on 2 cores).

    .venv/bin/python benchmarks/build_matrix.py [--families bert,albert] [--tasks text-classification]
        [--presets int8,nf4] [--timeout 900] [--out reports/build_matrix] [--resume]

Checkpoints are tiny models made from each family's config (widened to what bitsandbytes' CPU kernel takes, as
real checkpoints are), each with its own small WordPiece tokenizer
(tests/helpers/tiny_families.py: no hub downloads), trained briefly so their predictions differ per text. Each build
runs as its own `build-engine` process (--no-publish) with the data its preset needs; the table gives the outcome,
the chosen precision and runtime, the validation figures and the last console line for refusals and failures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "albert", "deberta-v2", "mpnet", "modernbert")
TASKS = ("text-classification", "token-classification", "embeddings")
PRESETS = ("fp32", "int8", "int8-static", "max-accuracy", "int4-weight-only", "nf4", "fast-cpu", "trt-fp16",
           "trt-int8", "trt-int8-static")


def make_inputs(root: Path, family: str, task: str) -> dict[str, Path]:
    """Checkpoint and data files for one family and task (made once, reused by every preset)."""
    from tests.helpers.tiny_checkpoint import EVAL_TEXTS, write_eval_data
    from tests.helpers.tiny_families import (
        make_embedding_checkpoint,
        make_family_checkpoint,
        make_ner_checkpoint,
        write_pairs,
    )

    root.mkdir(parents=True, exist_ok=True)
    texts = root / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in EVAL_TEXTS))
    if task == "text-classification":
        checkpoint = make_family_checkpoint(root / "checkpoint", family, wide=True)
        data = write_eval_data(root / "eval.jsonl", checkpoint)
        return {"checkpoint": checkpoint, "eval": data, "train": data, "calibration": texts}
    if task == "token-classification":
        from engineforge.demo.ner_data import NER_EVAL_FILE, NER_TRAIN_FILE

        return {"checkpoint": make_ner_checkpoint(root / "checkpoint", family, wide=True), "eval": Path(NER_EVAL_FILE),
                "train": Path(NER_TRAIN_FILE), "calibration": texts}
    pairs = write_pairs(root / "pairs.jsonl")
    return {"checkpoint": make_embedding_checkpoint(root / "checkpoint", family, wide=True), "eval": pairs,
            "train": pairs, "calibration": texts}


def run_build(inputs: dict[str, Path], task: str, preset: str, out: Path, timeout_s: float) -> dict:
    command = [str(Path(sys.executable).parent / "build-engine"), str(inputs["checkpoint"]), "--preset", preset,
               "--task", task, "--eval-data", str(inputs["eval"]), "--train-data", str(inputs["train"]),
               "--calibration-data", str(inputs["calibration"]), "--output", str(out), "--overwrite",
               "--no-publish"]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        code, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, stderr = -1, f"timed out after {timeout_s:g}s {exc.stderr or ''}"
    row = {"seconds": round(time.monotonic() - started, 1), "exit": code}
    lines = [line for line in str(stderr).splitlines() if line.strip()]
    report = out / "build_report.json"
    if code == 0 and report.is_file():
        data = json.loads(report.read_text())
        validation = data.get("validation") or {}
        row |= {"outcome": "ok", "precision": data.get("precision"), "runtime": data.get("runtime"),
                "validation": {k: validation[k] for k in ("agreement", "accuracy_drop", "cosine_mean", "cosine_worst",
                                                          "entity_f1", "token_agreement") if k in validation}}
    else:  # exit 2: refused before any work (a typed usage error); exit 1: the build ran and failed
        said = [line for line in lines if not line.startswith("Log: ")]  # a failed build ends naming its log
        message = said[-1] if said else ""
        over = "AccuracyBudgetExceeded" in str(stderr) or "outside the accuracy budget" in str(stderr)
        outcome = "refused" if code == 2 else "over budget" if over else "failed"
        row |= {"outcome": outcome, "message": message}
    return row


def table(rows: list[dict]) -> str:
    lines = ["| family | task | preset | outcome | precision / runtime | validation | s | message |",
             "|---|---|---|---|---|---|---:|---|"]
    for r in rows:
        figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in r.get("validation", {}).items())
        engine = f"{r.get('precision', '')} / {r.get('runtime', '')}" if r["outcome"] == "ok" else ""
        message = r.get("message", "").replace("|", "\\|")[:220]
        lines.append(f"| {r['family']} | {r['task']} | {r['preset']} | {r['outcome']} | {engine} | {figures} | "
                     f"{r['seconds']} | {message} |")
    counts = {o: sum(r["outcome"] == o for r in rows) for o in ("ok", "refused", "over budget", "failed")}
    return "\n".join(lines) + "\n\n" + ", ".join(f"{n} {o}" for o, n in counts.items()) + ".\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per build")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "build_matrix")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in OUT/matrix.json")
    args = parser.parse_args(argv)
    saved = args.out / "matrix.json"
    rows: list[dict] = json.loads(saved.read_text()) if args.resume and saved.is_file() else []
    done = {(r["family"], r["task"], r["preset"]) for r in rows}
    for task in args.tasks.split(","):
        for family in args.families.split(","):
            presets = [p for p in args.presets.split(",") if (family, task, p) not in done]
            if not presets:
                continue
            inputs = make_inputs(args.out / "inputs" / f"{family}-{task}", family, task)
            for preset in presets:
                row = {"family": family, "task": task, "preset": preset}
                row |= run_build(inputs, task, preset, args.out / "builds" / f"{family}-{task}-{preset}", args.timeout)
                rows.append(row)
                print(f"{family} {task} {preset}: {row['outcome']} ({row['seconds']}s) {row.get('message', '')[:160]}",
                      flush=True)
                saved.write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "matrix.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
