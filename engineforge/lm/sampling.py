"""Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling with a per-request seed."""

from __future__ import annotations

import numpy as np

from .engine import SamplingParams


def new_rng(params: SamplingParams) -> np.random.Generator:
    return np.random.default_rng(params.seed)


def choose_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """The next token for one sequence from its last-position logits [vocab]."""
    if params.greedy:
        return int(np.argmax(logits))
    scores = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < scores.size:
        cut = np.partition(scores, -params.top_k)[-params.top_k]
        scores = np.where(scores < cut, -np.inf, scores)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p) + 1)]  # smallest set reaching top_p
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))
