"""The contract every LM runtime fulfils, and the request parameters it takes.

An `LMEngine` holds many sequences at once and advances all of them with `step()`: sequences added since the last
step are prefilled (their prompt's KV cache computed once), and every active sequence gets one new token. That is
continuous (in-flight) batching: a request joins at the next step without waiting for the others to finish, and a
finished or cancelled one leaves at once. The engine knows nothing of text: the generation driver
(`generation.py`) tokenizes, detokenizes incrementally, applies stop strings and routes tokens to their requests.
Engines are not thread-safe; one thread (the driver's) calls them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engineforge.errors import ConfigError

# Why a sequence ended: its EOS token, max_tokens reached, a stop string matched (driver), cancelled by its client,
# or the engine failed on it.
EOS, LENGTH, STOP, CANCELLED, ERROR = "eos", "length", "stop", "cancelled", "error"
FINISH_REASONS = (EOS, LENGTH, STOP, CANCELLED, ERROR)


class InvalidGenerationRequest(ConfigError):
    """A request's parameters or prompt cannot be served (the message goes back to the client as INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request generates. temperature 0 is greedy (top_p/top_k/seed ignored)."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    seed: int | None = None  # sampling seed; None: a fresh one per request
    stop: tuple[str, ...] = ()  # strings that end the generation (not included in the text)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        problems = []
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            problems.append(f"max_tokens={self.max_tokens!r}: must be an integer >= 1")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            problems.append(f"temperature={self.temperature!r}: must be >= 0 (0 is greedy)")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p!r}: must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k={self.top_k!r}: must be an integer >= 0 (0 = no cut)")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            problems.append(f"seed={self.seed!r}: must be an integer >= 0")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop={list(self.stop)!r}: every stop string must be a non-empty string")
        if problems:
            raise InvalidGenerationRequest("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def check_prompt_ids(prompt_ids: Sequence[int], max_tokens: int, max_length: int,
                     vocab_size: int | None = None) -> list[int]:
    """The prompt as ints, or InvalidGenerationRequest when an engine of `max_length` positions (and `vocab_size`
    ids, where known) cannot take it with `max_tokens` more."""
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise InvalidGenerationRequest("the prompt is empty: send at least one token")
    if len(ids) + max_tokens > max_length:
        raise InvalidGenerationRequest(
            f"prompt of {len(ids)} tokens + max_tokens {max_tokens} exceeds the model's {max_length} "
            "positions; shorten the prompt or lower max_tokens")
    bad = [t for t in ids if vocab_size is not None and not 0 <= t < vocab_size]
    if bad:
        raise InvalidGenerationRequest(f"token ids {bad[:5]} are outside the vocabulary (0-{vocab_size - 1})")
    return ids


def finish_reason_after(token: int, generated: int, max_tokens: int, eos_token_ids: frozenset[int],
                        out_of_room: bool = False) -> str | None:
    """Why a sequence ends with `token`, its `generated`-th: EOS, or LENGTH at max_tokens (or when the runtime has
    no room left); None while it goes on. Every runtime ends sequences by this one rule."""
    if token in eos_token_ids:
        return EOS
    return LENGTH if generated >= max_tokens or out_of_room else None


@dataclass(frozen=True)
class TokenEvent:
    """One step's outcome for one sequence: a new token, and/or its end (finish_reason set; token_id may then be
    None, e.g. when cancelled)."""

    seq_id: int
    token_id: int | None
    finish_reason: str | None = None


class LMEngine(Protocol):
    """A loaded causal LM with its KV cache in the engine."""

    runtime: str
    max_batch: int  # sequences decoded together at most; more wait in the engine's queue
    max_length: int  # prompt + generated tokens per sequence at most
    eos_token_ids: frozenset[int]

    def add(self, prompt_ids: Sequence[int], params: SamplingParams) -> int:
        """Queue a sequence; returns its id. Raises InvalidGenerationRequest for an empty or too long prompt."""
        ...

    def cancel(self, seq_id: int) -> None:
        """Stop a sequence; its CANCELLED event comes from the next step (unknown or finished ids are ignored)."""
        ...

    def step(self) -> list[TokenEvent]:
        """Prefill what was added, decode one token for every active sequence; events in no particular order."""
        ...

    def has_work(self) -> bool:
        ...

    def log_probs(self, ids: Sequence[int]) -> list[float]:
        """log p(ids[i] | ids[:i]) for i = 1..len(ids)-1 (perplexity), computed outside any running sequence."""
        ...

    def settings(self) -> dict[str, Any]:
        """How the runtime was configured (threads, precision, batch...), for reports."""
        ...
