"""Times llama.cpp (llama-cpp-python) on a GGUF, for bench_lm.py. Runs under the interpreter that has `llama_cpp`
(llama-cpp-python needs numpy >= 2, which engineforge's environment cannot have), so bench_lm.py calls it as a
subprocess:

    PY -m benchmarks.llama_cpp_timing GGUF THREADS NEW_TOKENS ROUNDS < prompts.json  -> JSON timings on stdout

Prompts are token-id lists (the same ids the engine gets). Per generation: TTFT (prompt -> first token) and decode
tokens/s = (tokens - 1) / (last token time - first token time), greedy.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    from llama_cpp import Llama

    gguf, threads, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    prompts = json.load(sys.stdin)
    llm = Llama(model_path=gguf, n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False)
    timings = []
    for round_ in range(rounds + 1):  # round 0 warms up
        for ids in prompts:
            llm.reset()
            start, stamps = time.perf_counter(), []
            for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
                stamps.append(time.perf_counter())
                if len(stamps) >= n or token == llm.token_eos():
                    break
            if round_ and len(stamps) > 1:
                timings.append({"ttft_ms": (stamps[0] - start) * 1000,
                                "decode_tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]), "tokens": len(stamps)})
    json.dump(timings, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
