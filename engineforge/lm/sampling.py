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


def next_token_log_probs(logits: np.ndarray, ids: list[int]) -> list[float]:
    """log p(ids[i + 1] | ids[:i + 1]) from `logits` [len(ids) - 1, vocab] (every position's scores but the last)."""
    scores = np.asarray(logits, dtype=np.float64)
    top = scores.max(axis=-1, keepdims=True)
    logp = scores - top - np.log(np.exp(scores - top).sum(axis=-1, keepdims=True))
    return logp[np.arange(len(ids) - 1), ids[1:]].tolist()
