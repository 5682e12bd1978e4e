"""Decoder-LM benchmark: the built engine against PyTorch fp32 eager (and llama.cpp on the same GGUF when
`llama_cpp` imports), batch-1 decode speed and time to first token, then streams sharing the engine.

    .venv/bin/python benchmarks/bench_lm.py --checkpoint CKPT_DIR --bundle BUILD/engine \\
        [--gguf FILE.gguf --llama-cpp-python PY] [--new-tokens 64] [--rounds 3] [--threads 2] [--streams 8]

In ONE run, on one machine, each at --threads threads:
1. batch 1: every system answers the same chat prompts greedily with exactly --new-tokens new tokens; decode
   tokens/s = (new tokens - 1) / (time of the last token - time of the first), TTFT = time to the first token.
   PyTorch eager is timed the way its users run it (`model.generate` with its KV cache; TTFT from a 1-token
   generate). Timed alone (each system's rounds back to back) and interleaved (round-robin), medians reported.
2. streams: the engine's output tokens/s with --streams concurrent requests through the scheduler (continuous
   batching) against 1 stream.
3. with --url: the served model (the same bundle published), same prompt ids over a gRPC stream, timed with the rest.
Targets (issue 22): engine decode >= 3x PyTorch fp32 eager; within 1.2x of llama.cpp where it builds; output
tokens/s at 8 streams >= 3x one stream; served TTFT p50 <= 1.3x in-process. Writes reports/bench-lm/bench_lm.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engineforge.lm.bundle import open_lm_bundle  # noqa: E402
from engineforge.lm.engine import SamplingParams  # noqa: E402
from engineforge.lm.generation import Scheduler, generate  # noqa: E402

OUT = ROOT / "reports" / "bench-lm"
PROMPTS = ("What is the capital of France?", "Give me three tips for writing a clear support reply.",
           "How do I reset my password?", "Explain what a refund is in one sentence.")
Timing = dict[str, float]


def chat_ids(tokenizer: Any, prompt: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return list(tokenizer(prompt).input_ids)


def engine_runner(engine: Any, tokenizer: Any, n: int) -> Callable[[list[int]], Timing]:
    def run(ids: list[int]) -> Timing:
        start, stamps = time.perf_counter(), []
        for piece in generate(engine, tokenizer, ids, SamplingParams(max_tokens=n)):
            stamps.extend([time.perf_counter()] * len(piece.token_ids))
        return _timing(start, stamps)
    return run


def served_runner(url: str, model: str, n: int) -> Callable[[list[int]], Timing]:
    """The same prompt ids over gRPC to the served model (a Triton stream); timed from the request's send."""
    from engineforge.serve.client import EngineforgeClient

    client = EngineforgeClient(url)

    def run(ids: list[int]) -> Timing:
        stamps, sent = [], None
        for piece in client.generate(ids, model=model, max_tokens=n):
            sent = piece.time_s - piece.since_start_s if sent is None else sent
            stamps.extend([piece.time_s] * len(piece.token_ids))
        return _timing(sent or stamps[0], stamps)
    return run


def eager_runner(checkpoint: Path, n: int) -> Callable[[list[int]], Timing]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()

    def run(ids: list[int]) -> Timing:
        feed = torch.tensor([ids])
        with torch.inference_mode():
            start = time.perf_counter()
            model.generate(feed, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            first = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(feed, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            total = time.perf_counter() - start
        return {"ttft_ms": first * 1000, "decode_tok_s": (n - 1) / max(total - first, 1e-9)}
    return run


def llama_cpp_timings(python: Path, gguf: Path, threads: int, n: int, rounds: int,
                      prompts: list[list[int]]) -> dict[str, float] | str:
    """llama.cpp on the same GGUF, alone, in the interpreter that has llama-cpp-python (it needs numpy >= 2)."""
    import subprocess

    done = subprocess.run([str(python), str(ROOT / "benchmarks" / "llama_cpp_timing.py"), str(gguf), str(threads),
                           str(n), str(rounds)], input=json.dumps(prompts), capture_output=True, text=True)
    if done.returncode != 0:
        return f"llama.cpp did not run: {done.stderr.strip().splitlines()[-1:] or done.returncode}"
    timings = json.loads(done.stdout)
    return {key: statistics.median(t[key] for t in timings) for key in ("ttft_ms", "decode_tok_s")}


def _timing(start: float, stamps: list[float]) -> Timing:
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return {"ttft_ms": (stamps[0] - start) * 1000, "decode_tok_s": decode, "tokens": len(stamps)}


def time_systems(runners: dict[str, Callable[[list[int]], Timing]], prompts: list[list[int]],
                 rounds: int) -> dict[str, dict[str, dict[str, float]]]:
    """Per system: medians alone (its rounds back to back) and interleaved (round-robin over systems)."""
    results: dict[str, dict[str, list[Timing]]] = {name: {"alone": [], "interleaved": []} for name in runners}
    for name, run in runners.items():
        run(prompts[0])  # warm-up
        for _ in range(rounds):
            results[name]["alone"].extend(run(ids) for ids in prompts)
    for _ in range(rounds):
        for ids in prompts:
            for name, run in runners.items():
                results[name]["interleaved"].append(run(ids))
    return {name: {mode: {key: statistics.median(t[key] for t in timings) for key in ("ttft_ms", "decode_tok_s")}
                   for mode, timings in modes.items()} for name, modes in results.items()}


def streams_throughput(engine: Any, tokenizer: Any, prompts: list[list[int]], streams: int, n: int) -> float:
    """Output tokens/s with `streams` concurrent requests through the scheduler (each `n` tokens)."""
    scheduler = Scheduler(engine, tokenizer)
    done, counts = threading.Semaphore(0), [0]

    def on_piece(piece: Any) -> None:
        counts[0] += len(piece.token_ids)
        if piece.finish_reason is not None:
            done.release()
    start = time.perf_counter()
    for i in range(streams):
        scheduler.submit(prompts[i % len(prompts)], SamplingParams(max_tokens=n), on_piece)
    for _ in range(streams):
        done.acquire()
    elapsed = time.perf_counter() - start
    scheduler.close()
    return counts[0] / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the fp32 HF dir built from")
    parser.add_argument("--bundle", type=Path, required=True, help="the built engine bundle (BUILD/engine)")
    parser.add_argument("--gguf", type=Path, help="the GGUF file for llama.cpp")
    parser.add_argument("--llama-cpp-python", type=Path, help="a python interpreter with llama-cpp-python installed")
    parser.add_argument("--url", help="a running server's gRPC address: also time the served model (--model)")
    parser.add_argument("--model", default="support-lm", help="the served LM built from --bundle")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, default=8)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    spec, engine, tokenizer = open_lm_bundle(args.bundle, threads=args.threads, max_batch=args.streams)
    prompts = [chat_ids(tokenizer, p) for p in PROMPTS]
    n = args.new_tokens
    runners = {f"engine ({spec.runtime} {spec.precision})": engine_runner(engine, tokenizer, n),
               "PyTorch fp32 eager": eager_runner(args.checkpoint, n)}
    if args.url:
        runners[f"served {args.model} (Triton, gRPC stream)"] = served_runner(args.url, args.model, n)
    batch1 = time_systems(runners, prompts, args.rounds)
    llama: dict[str, float] | str = "not timed: give --gguf and --llama-cpp-python"
    if args.gguf and args.llama_cpp_python:
        llama = llama_cpp_timings(args.llama_cpp_python, args.gguf, args.threads, n, args.rounds, prompts)
    one = streams_throughput(engine, tokenizer, prompts, 1, n)
    many = streams_throughput(engine, tokenizer, prompts, args.streams, n)
    result = {"new_tokens": n, "threads": args.threads, "rounds": args.rounds, "batch1": batch1,
              "llama_cpp": llama,
              "streams": {"1": one, "n": args.streams, "many": many, "ratio": many / one}, "spec": spec.runtime}
    write(result, list(runners))
    return 0


def write(result: dict[str, Any], names: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_lm.json").write_text(json.dumps(result, indent=2) + "\n")
    eager = result["batch1"]["PyTorch fp32 eager"]
    lines = ["# Decoder LM benchmark", "", f"{result['new_tokens']} new tokens, greedy, {result['threads']} threads, "
             f"{result['rounds']} rounds x {len(PROMPTS)} prompts; medians.", "",
             "| system | decode tok/s alone | interleaved | vs eager (alone / interleaved) | TTFT ms alone | "
             "interleaved |", "|---|---|---|---|---|---|"]
    for name in names:
        row = result["batch1"][name]
        ratio = [row[m]["decode_tok_s"] / eager[m]["decode_tok_s"] for m in ("alone", "interleaved")]
        lines.append(f"| {name} | {row['alone']['decode_tok_s']:.1f} | {row['interleaved']['decode_tok_s']:.1f} | "
                     f"{ratio[0]:.2f}x / {ratio[1]:.2f}x | {row['alone']['ttft_ms']:.1f} | "
                     f"{row['interleaved']['ttft_ms']:.1f} |")
    streams = result["streams"]
    llama = result["llama_cpp"]
    engine = result["batch1"][names[0]]["alone"]["decode_tok_s"]
    lines += ["", f"llama.cpp (same GGUF, alone): {llama['decode_tok_s']:.1f} tok/s, TTFT {llama['ttft_ms']:.1f} ms; "
              f"engine / llama.cpp = {engine / llama['decode_tok_s']:.2f}x (target >= 1/1.2 = 0.83x)"
              if isinstance(llama, dict) else f"llama.cpp: {llama}", "",
              f"Streams through the scheduler: 1 stream {streams['1']:.1f} output tok/s; {streams['n']} streams "
              f"{streams['many']:.1f} tok/s ({streams['ratio']:.2f}x; target >= 3x)."]
    (OUT / "bench_lm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
