"""A note, not a benchmark: engineforge's `loadtest --mode generate` beside NVIDIA GenAI-Perf.

Why there is no side-by-side run here: `genai-perf` is not installed in this environment (checked when this file
runs; nothing is pip-installed by the benchmarks), so no GenAI-Perf number has ever been produced next to ours, and
this file states none. It is the checklist for whoever runs the comparison where GenAI-Perf is available.

1. Same model, same inputs. GenAI-Perf's Triton service kind talks to the tensorrtllm / vllm backends' tensor names
   (text_input, max_tokens, stream, ...), not engineforge's LM contract (TEXT, MAX_TOKENS, ...; see
   loadtest/generate_requests.py). Compare through a model that declares both, or through an OpenAI-compatible
   frontend on the same server; otherwise the two tools do not send the same request.
2. Same load. Closed loop: `--concurrency N` here, `--concurrency N` there. Prompt and output lengths: our
   `--prompt-len` counts *words* (no client tokenizer; PROMPT_TOKENS from the server is the real count), GenAI-Perf
   synthesizes prompts with a tokenizer; fix MAX_TOKENS (`--max-tokens 128`) and let the model ignore EOS, or compare
   per-token figures only.
3. Same definitions (engineforge's are in loadtest/generate_metrics.py DEFINITIONS and in every report):
   - TTFT: first response that carries tokens minus the send; both tools skip empty responses.
   - ITL: (end-to-end - TTFT) / (output tokens - 1) per request, GenAI-Perf's definition; requests with < 2 tokens
     have none. We also report every gap between streamed pieces.
   - Output token throughput: GenAI-Perf divides by the whole benchmark's span (first send to last response); we
     divide by the measurement window after a warm-up, counting requests completed in it (perf_analyzer's rule).
     Expect ours to be steadier on short runs, equal in steady state.
   - Percentiles: numpy's default (linear interpolation) in both; we report p50/p90/p99/p99.9, mean, min, max.
   - Open loop (`--rate`): our TTFT and end-to-end run from each request's *scheduled* send (no coordinated
     omission); GenAI-Perf's request-rate mode measures from the actual send.
"""

from __future__ import annotations

import shutil
import sys


def main() -> int:
    if shutil.which("genai-perf") is None:
        print(__doc__)
        print("genai-perf is not on PATH: nothing was compared (see the checklist above).", file=sys.stderr)
        return 2
    print("genai-perf is installed; follow the checklist above to run both tools against the same model.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
