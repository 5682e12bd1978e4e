"""What each generate request asks for (`--mode generate`): a prompt and a MAX_TOKENS.

Prompts come from a file (`--prompts`, JSONL with a "prompt" or "text" field per line) or are synthesized:
`--prompt-len` (the `--seq-len` syntax of loadtest/lengths.py: 32, 16-64 (or 16:64), 16,32,64, normal:48,16)
draws each prompt's length in *words* from a fixed list of common English words. The client has no tokenizer, so
a word stands in for a token (most of these are one token in BPE vocabularies); the real count is the server's
PROMPT_TOKENS, which the report uses. `--max-tokens` draws each request's MAX_TOKENS the same way. A plan is drawn
once, seeded, and cycled by request number, so every run (and every worker process) sends the same requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engineforge.data import read_jsonl_rows
from engineforge.errors import ConfigError, DataError

from .lengths import parse_lengths

# Short, common words: roughly one token each in GPT-2/Llama-style vocabularies.
WORDS: tuple[str, ...] = tuple(
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by word but "
    "not what all were we when your can said there use an each which she do how their if will up other about out "
    "many then them these so some her would make like him into time has look two more write go see number no way "
    "could people my than first water been call who oil its now find long down day did get come made may part".split()
)
PLAN_SIZE = 512  # distinct requests per run, cycled


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    max_tokens: int | None  # None: MAX_TOKENS not sent (the model's default)


def length_spec(spec: int | str) -> str:
    """A length spec in the `--seq-len` syntax; a range may also be written lo:hi (GenAI-Perf users' habit)."""
    text = str(spec).strip()
    return text.replace(":", "-") if ":" in text and not text.startswith("normal:") else text


def synthetic_prompt(n_words: int, rng: np.random.Generator) -> str:
    """`n_words` words drawn from WORDS (>= 1 word)."""
    picks = rng.integers(0, len(WORDS), size=max(int(n_words), 1))
    return " ".join(WORDS[i] for i in picks)


def load_prompts(path: str | Path) -> list[str]:
    """Prompts of a JSONL file: one object per line with a "prompt" (or "text") string; blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file {path} does not exist; give a JSONL file with one {{\"prompt\": ...}} per line")
    prompts = []
    for number, row in read_jsonl_rows(path, '{"prompt": "..."}'):
        text = row.get("prompt", row.get("text"))
        if not isinstance(text, str) or not text:
            raise DataError(f"{path}:{number}: no \"prompt\" or \"text\" string; each line must be an object like "
                            "{\"prompt\": \"...\"}")
        prompts.append(text)
    if not prompts:
        raise DataError(f"prompts file {path} has no prompts; add lines like {{\"prompt\": \"...\"}}")
    return prompts


def request_plan(prompts: tuple[str, ...] | list[str], prompt_len: int | str, max_tokens: int | str | None, *,
                 seed: int = 0, size: int = PLAN_SIZE) -> list[GenerateRequest]:
    """The requests of a run: the given prompts in order (cycled to `size` when MAX_TOKENS varies), or synthetic
    prompts of `prompt_len` words; each with a MAX_TOKENS drawn from `max_tokens` (None: not sent)."""
    rng = np.random.default_rng(seed)
    try:
        limits = parse_lengths(length_spec(max_tokens)) if max_tokens is not None else None
    except ConfigError:
        raise ConfigError(f"--max-tokens {max_tokens!r}: give 128, a range 16-64, a list 16,32,64 or "
                          "normal:MEAN,STD; every value >= 1") from None
    if prompts:
        texts = [prompts[i % len(prompts)] for i in range(max(size, len(prompts)) if limits and not limits.fixed
                                                             else len(prompts))]
    else:
        lengths = parse_lengths(length_spec(prompt_len)).sample(rng, size)
        texts = [synthetic_prompt(n, rng) for n in lengths]
    counts = limits.sample(rng, len(texts)) if limits is not None else [None] * len(texts)
    return [GenerateRequest(t, None if c is None else int(c)) for t, c in zip(texts, counts, strict=True)]
