"""How far a built LM engine moved from the fp32 model: perplexity on texts and greedy agreement on prompts, and
the budget a build judges them against.

Perplexity catches a general loss of modelling quality; greedy agreement catches what users see (the same prompt
now answers differently). Both are needed: int4 can keep perplexity within 2 % and still flip the first token of
one prompt in five, and agreement alone says nothing on a set with few prompts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from engineforge.errors import ConfigError, DataError
from engineforge.lm.engine import LMEngine, SamplingParams
from engineforge.lm.generation import generate

DEFAULT_NEW_TOKENS = 16  # greedy tokens compared per prompt


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids the way served prompts are encoded (the tokenizer's own special tokens included)."""
    return list(tokenizer(text)["input_ids"])


def perplexity(engine: LMEngine, tokenizer: Any, texts: Sequence[str]) -> float:
    """exp(mean NLL) over every predicted token of every text (token-weighted, as lm-eval-harness does), each text
    cut to the engine's positions. Texts of one token predict nothing and are skipped."""
    total_nll, count = 0.0, 0
    for text in texts:
        ids = encode(tokenizer, text)[: engine.max_length]
        if len(ids) < 2:
            continue
        log_probs = engine.log_probs(ids)
        total_nll -= sum(log_probs)
        count += len(log_probs)
    if count == 0:
        raise DataError("no eval text has two or more tokens: perplexity needs texts to predict; add longer "
                        "{\"text\": ...} rows")
    return math.exp(total_nll / count)


def greedy_continuations(engine: LMEngine, tokenizer: Any, prompts: Sequence[str],
                         n: int = DEFAULT_NEW_TOKENS) -> list[list[int]]:
    """The first `n` greedy token ids after each prompt (fewer where EOS came first; EOS itself included)."""
    outputs = []
    for prompt in prompts:
        ids = encode(tokenizer, prompt)
        room = engine.max_length - len(ids)
        if not ids or room < 1:
            raise DataError(f"eval prompt {prompt[:60]!r} has {len(ids)} tokens; the model reads "
                            f"{engine.max_length}: shorten it")
        params = SamplingParams(max_tokens=min(n, room), temperature=0.0)
        outputs.append([t for piece in generate(engine, tokenizer, ids, params) for t in piece.token_ids])
    return outputs


def completion_ids(tokenizer: Any, prompt: str, completion: str) -> list[int]:
    """The token ids a given completion continues `prompt` with: as the model reads prompt + completion, so a BPE
    merge across the boundary is kept; the completion on its own where the prompt's ids are not a prefix."""
    prompt_ids, whole = encode(tokenizer, prompt), encode(tokenizer, prompt + completion)
    if whole[: len(prompt_ids)] == prompt_ids and len(whole) > len(prompt_ids):
        return whole[len(prompt_ids):]
    return list(tokenizer(completion, add_special_tokens=False)["input_ids"])


def first_difference(reference: Sequence[int], engine: Sequence[int], n: int = DEFAULT_NEW_TOKENS) -> int | None:
    """Position of the first new token where `engine` differs from `reference` within the first `n` (None: they
    agree). A reference that ended by EOS before `n` is compared over its own length, EOS included, so an engine
    that goes on past it differs there."""
    limit = min(n, len(reference))
    for i in range(limit):
        if i >= len(engine) or engine[i] != reference[i]:
            return i
    return None


def agreement(reference_ids: Sequence[Sequence[int]], engine_ids: Sequence[Sequence[int]],
              n: int = DEFAULT_NEW_TOKENS) -> float:
    """Share of prompts whose first `n` new tokens match the reference exactly."""
    if len(reference_ids) != len(engine_ids):
        raise ValueError(f"{len(reference_ids)} reference continuations vs {len(engine_ids)} engine ones")
    if not reference_ids:
        raise ValueError("agreement of no prompts")
    same = sum(first_difference(r, e, n) is None for r, e in zip(reference_ids, engine_ids, strict=True))
    return same / len(reference_ids)


@dataclass(frozen=True)
class LMBudget:
    """Max perplexity increase over fp32 in percent, per precision, and min greedy agreement (a fraction)."""

    max_ppl_increase_fp32: float = 1.0
    max_ppl_increase_int8: float = 3.0
    max_ppl_increase_int4: float = 8.0
    max_ppl_increase_nf4: float = 8.0
    min_agreement: float = 0.90

    def __post_init__(self) -> None:
        problems = [f"{name}={value!r}: give a percentage >= 0" for name, value in asdict(self).items()
                    if name.startswith("max_ppl") and not (isinstance(value, int | float) and math.isfinite(value)
                                                           and value >= 0)]
        if not (isinstance(self.min_agreement, int | float) and 0 <= self.min_agreement <= 1):
            problems.append(f"min_agreement={self.min_agreement!r}: give a fraction in [0, 1], e.g. 0.9")
        if problems:
            raise ConfigError("LM budget: " + "; ".join(problems))

    @classmethod
    def uniform(cls, max_ppl_increase: float | None = None, min_agreement: float | None = None) -> LMBudget:
        """The defaults, with one perplexity limit for every precision and/or another agreement (CLI flags)."""
        values: dict[str, float] = {}
        if max_ppl_increase is not None:
            values = {f"max_ppl_increase_{p}": max_ppl_increase for p in ("fp32", "int8", "int4", "nf4")}
        if min_agreement is not None:
            values["min_agreement"] = min_agreement
        return cls(**values)

    def max_ppl_increase(self, precision: str) -> float:
        limit = getattr(self, f"max_ppl_increase_{precision}", None)
        if limit is None:
            raise ConfigError(f"LM budget has no perplexity limit for precision {precision!r}")
        return float(limit)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def describe(self) -> str:
        limits = ", ".join(f"{name.rsplit('_', 1)[1]} {value:g}%" for name, value in asdict(self).items()
                           if name.startswith("max_ppl"))
        return f"perplexity increase <= {limits}; greedy agreement >= {self.min_agreement:.0%}"


@dataclass(frozen=True)
class LMComparison:
    """One engine against the fp32 reference on the eval data. None where the data has no texts / prompts."""

    precision: str
    reference_perplexity: float | None
    perplexity: float | None
    agreement: float | None
    prompts: int = 0
    agreeing: int = 0
    worst_prompt: str = ""  # the prompt whose continuation diverged earliest
    worst_position: int | None = None  # its first differing new token
    reference_token: str = ""  # what fp32 said there
    engine_token: str = ""  # "(ended)" when the engine had stopped before

    @property
    def perplexity_increase_pct(self) -> float | None:
        if self.perplexity is None or not self.reference_perplexity:
            return None
        return (self.perplexity - self.reference_perplexity) / self.reference_perplexity * 100

    def figures(self) -> dict[str, Any]:
        increase = self.perplexity_increase_pct
        return {"precision": self.precision, "reference_perplexity": _round(self.reference_perplexity),
                "perplexity": _round(self.perplexity), "perplexity_increase_pct": _round(increase, 3),
                "agreement": _round(self.agreement, 4), "prompts": self.prompts, "agreeing": self.agreeing,
                "worst_prompt": self.worst_prompt, "worst_position": self.worst_position,
                "reference_token": self.reference_token, "engine_token": self.engine_token}

    def violations(self, budget: LMBudget) -> list[str]:
        problems = []
        increase, limit = self.perplexity_increase_pct, budget.max_ppl_increase(self.precision)
        if increase is not None and increase > limit:
            problems.append(f"perplexity rose {increase:.2f}% ({self.reference_perplexity:.4g} fp32 -> "
                            f"{self.perplexity:.4g}), budget {limit:g}% for {self.precision}")
        if self.agreement is not None and self.agreement < budget.min_agreement:
            problems.append(f"greedy agreement with fp32 is {self.agreement:.2%} ({self.agreeing}/{self.prompts} "
                            f"prompts), budget >= {budget.min_agreement:.0%}; worst prompt "
                            f"{shorten_prompt(self.worst_prompt)!r} "
                            f"first differs at new token {self.worst_position}: fp32 {self.reference_token!r} vs "
                            f"engine {self.engine_token!r}")
        return problems


def shorten_prompt(prompt: str, keep: int = 80) -> str:
    """A long prompt's end, where prompts differ: chat-formatted prompts share their system-message start."""
    return prompt if len(prompt) <= keep else "…" + prompt[-(keep - 1):]


def compare_lm(precision: str, reference_perplexity: float | None, engine_perplexity: float | None,
               prompts: Sequence[str], reference_ids: Sequence[Sequence[int]], engine_ids: Sequence[Sequence[int]],
               decode: Callable[[int], str] = str, n: int = DEFAULT_NEW_TOKENS) -> LMComparison:
    """Pure: figures of one engine from what was measured. `decode` turns one token id into text for messages."""
    if not prompts:
        return LMComparison(precision, reference_perplexity, engine_perplexity, None)
    diffs = [first_difference(r, e, n) for r, e in zip(reference_ids, engine_ids, strict=True)]
    differing = [(pos, i) for i, pos in enumerate(diffs) if pos is not None]
    agreeing = len(prompts) - len(differing)
    worst: dict[str, Any] = {}
    if differing:
        pos, i = min(differing)  # earliest divergence: what a user would notice first
        ref, eng = reference_ids[i], engine_ids[i]
        worst = {"worst_prompt": prompts[i], "worst_position": pos,
                 "reference_token": decode(ref[pos]) if pos < len(ref) else "",
                 "engine_token": decode(eng[pos]) if pos < len(eng) else "(ended)"}
    return LMComparison(precision, reference_perplexity, engine_perplexity, agreeing / len(prompts), len(prompts),
                        agreeing, **worst)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)
