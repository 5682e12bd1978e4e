"""Decode speed of an LM engine at batch 1: tokens/s over a fixed number of new tokens and time to first token.

Both are medians over a few runs after one warm-up (the first run pays for lazy initialisation). The count is fixed
by ignoring EOS while timing where the engine lets us (its `eos_token_ids` attribute), so a model that stops early
on the timing prompt is not reported faster or slower than it is.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

from engineforge.lm.engine import LMEngine, SamplingParams

DEFAULT_TIMED_TOKENS = 32
DEFAULT_RUNS = 3


def time_decode(engine: LMEngine, prompt_ids: Sequence[int], new_tokens: int = DEFAULT_TIMED_TOKENS,
                runs: int = DEFAULT_RUNS) -> dict[str, Any]:
    """{"tokens_per_s", "ttft_ms", "timed_tokens", "runs"}: decode rate after the first token, prefill + first
    token latency."""
    new_tokens = max(2, min(new_tokens, engine.max_length - len(prompt_ids)))
    eos = engine.eos_token_ids
    try:
        engine.eos_token_ids = frozenset()  # type: ignore[misc]  # fixed token count (see the module docstring)
    except AttributeError:
        pass
    try:
        _run(engine, prompt_ids, new_tokens)  # warm-up
        results = [_run(engine, prompt_ids, new_tokens) for _ in range(runs)]
    finally:
        try:
            engine.eos_token_ids = eos  # type: ignore[misc]
        except AttributeError:
            pass
    ttft = statistics.median(r[0] for r in results)
    rates = [(count - 1) / decode_s for _, decode_s, count in results if count > 1 and decode_s > 0]
    return {"tokens_per_s": round(statistics.median(rates), 2) if rates else None, "ttft_ms": round(ttft * 1000, 2),
            "timed_tokens": new_tokens, "runs": runs}


def _run(engine: LMEngine, prompt_ids: Sequence[int], new_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token, seconds for the rest, tokens generated)."""
    start = time.perf_counter()
    seq_id = engine.add(prompt_ids, SamplingParams(max_tokens=new_tokens, temperature=0.0))
    first = None
    count = 0
    while engine.has_work():
        for event in engine.step():
            if event.seq_id == seq_id and event.token_id is not None:
                count += 1
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    first = first if first is not None else end
    return first - start, end - first, count
