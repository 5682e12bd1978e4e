"""engineforge's `loadtest --mode generate` beside NVIDIA GenAI-Perf, on the same served LM, prompts and load.

    bash benchmarks/get_genai_perf.sh        # genai-perf + a perf_analyzer that runs here, in their own venv
    engineforge serve --repo model_repo --grpc-port 8101
    python benchmarks/bench_genai_perf.py --url 127.0.0.1:8101 --model support-lm \
        --tokenizer artifacts/builds/demo-smollm2/bundle/tokenizer

GenAI-Perf drives the model through Triton's LLM layout (text_input + sampling_parameters, serve/lm_compat.py),
engineforge through the model's own tensors; both are closed loop at each concurrency, same prompts, same
max_tokens. The two tools alternate per level (fair on a busy machine) and every figure is what a tool reported.

Definitions differ in two places, so the ratios are read with them in mind:
- Output tokens: GenAI-Perf re-tokenizes the streamed text (an answer that is only EOS counts 0 tokens), engineforge
  counts the token ids the server sent (EOS included).
- Throughput: GenAI-Perf divides by the whole run (first send to last response, with its request count), engineforge
  by its measurement window after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GENAI_PERF = ROOT / "artifacts" / "genai-perf" / "bin" / "genai-perf-run"  # get_genai_perf.sh
DEMO_PROMPTS = ROOT / "engineforge" / "demo" / "data" / "lm_eval.jsonl"
# (row label, engineforge key, percentile, GenAI-Perf metric, its statistic)
ROWS = (("TTFT p50 (ms)", "ttft_ms", "p50", "time_to_first_token", "p50"),
        ("TTFT p99 (ms)", "ttft_ms", "p99", "time_to_first_token", "p99"),
        ("ITL p50 (ms)", "itl_ms", "p50", "inter_token_latency", "p50"),
        ("end-to-end p50 (ms)", "e2e_ms", "p50", "request_latency", "p50"),
        ("end-to-end p99 (ms)", "e2e_ms", "p99", "request_latency", "p99"),
        ("output tokens per request (mean)", "output_tokens", "mean", "output_sequence_length", "avg"),
        ("output tok/s", "output_tokens_per_s", None, "output_token_throughput", "avg"),
        ("requests/s", "requests_per_s", None, "request_throughput", "avg"))


def prompts_file(source: Path, out: Path) -> tuple[Path, Path]:
    """The prompts as each tool reads them: ours {"prompt"}, GenAI-Perf's {"text"}."""
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    prompts = [r["prompt"] for r in rows if "prompt" in r] or [r["text"] for r in rows if "text" in r]
    ours, theirs = out / "prompts.jsonl", out / "genai_perf_prompts.jsonl"
    ours.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    theirs.write_text("".join(json.dumps({"text": p}) + "\n" for p in prompts))
    return ours, theirs


def run_ours(args: argparse.Namespace, prompts: Path, concurrency: int, out: Path) -> dict[str, Any]:
    from engineforge.loadtest import cli as loadtest_cli

    name = f"engineforge-c{concurrency}"
    code = loadtest_cli.main(["--model", args.model, "--url", args.url, "--mode", "generate",
                              "--concurrency", str(concurrency), "--duration", str(args.duration),
                              "--warmup", str(args.warmup), "--prompts", str(prompts),
                              "--max-tokens", str(args.max_tokens), "--out", str(out), "--name", name])
    if code != 0:
        raise SystemExit(f"engineforge loadtest failed at concurrency {concurrency} (exit {code})")
    return json.loads((out / f"{name}.json").read_text())["levels"][0]["generation"]


def run_genai_perf(args: argparse.Namespace, prompts: Path, concurrency: int, out: Path) -> dict[str, Any]:
    artifacts = out / f"genai-perf-c{concurrency}"
    command = [str(args.genai_perf), "profile", "-m", args.model, "--endpoint-type", "kserve", "--backend", "vllm",
               "--streaming", "-u", args.url, "--input-file", str(prompts), "--output-tokens-mean",
               str(args.max_tokens), "--concurrency", str(concurrency), "--request-count",
               str(args.requests * concurrency), "--tokenizer", str(args.tokenizer), "--artifact-dir", str(artifacts)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    exports = sorted(artifacts.rglob("profile_export_genai_perf.json"))
    if done.returncode != 0 or not exports:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"genai-perf failed at concurrency {concurrency} (exit {done.returncode}):\n{tail}")
    return json.loads(exports[0].read_text())


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for label, key, stat, metric, their_stat in ROWS:
        mine = ours.get(key)
        mine = mine.get(stat) if isinstance(mine, dict) else mine
        other = (theirs.get(metric) or {}).get(their_stat)
        ratio = round(mine / other, 3) if isinstance(mine, int | float) and other else None
        rows.append({"metric": label, "engineforge": _round(mine), "genai_perf": _round(other), "ratio": ratio})
    return rows


def _round(value: Any) -> Any:
    return round(value, 2) if isinstance(value, float) else value


def markdown(levels: dict[int, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    lines = [f"# engineforge loadtest vs GenAI-Perf: {args.model}", "",
             f"Closed loop, {args.max_tokens} max tokens, prompts from {args.prompts}; GenAI-Perf "
             f"{args.requests} requests per unit of concurrency, engineforge a {args.duration:g} s window after "
             f"{args.warmup:g} s warm-up. Ratio = engineforge / GenAI-Perf.", ""]
    for concurrency, rows in levels.items():
        lines += [f"## concurrency {concurrency}", "", "| metric | engineforge | GenAI-Perf | ratio |",
                  "|---|---|---|---|"]
        lines += [f"| {r['metric']} | {r['engineforge']} | {r['genai_perf']} | {r['ratio']} |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="127.0.0.1:8101")
    parser.add_argument("--model", default="support-lm")
    parser.add_argument("--tokenizer", type=Path, required=True, help="the served bundle's tokenizer directory")
    parser.add_argument("--prompts", type=Path, default=DEMO_PROMPTS)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--requests", type=int, default=20, help="GenAI-Perf requests per unit of concurrency")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--genai-perf", type=Path, default=DEFAULT_GENAI_PERF)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench-genai-perf")
    args = parser.parse_args(argv)
    if not args.genai_perf.exists():
        print(f"{args.genai_perf} not found: run `bash benchmarks/get_genai_perf.sh` first", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    ours_prompts, their_prompts = prompts_file(args.prompts, args.out)
    levels: dict[int, list[dict[str, Any]]] = {}
    for index, concurrency in enumerate(int(c) for c in args.concurrency.split(",")):
        runs = [("ours", run_ours, ours_prompts), ("theirs", run_genai_perf, their_prompts)]
        results = {who: run(args, prompts, concurrency, args.out)
                   for who, run, prompts in (runs if index % 2 == 0 else runs[::-1])}
        levels[concurrency] = compare(results["ours"], results["theirs"])
    text = markdown(levels, args)
    (args.out / "bench_genai_perf.md").write_text(text)
    (args.out / "bench_genai_perf.json").write_text(json.dumps({str(c): r for c, r in levels.items()}, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
