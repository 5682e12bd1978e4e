"""Eval data for decoder LMs: one JSONL file, two kinds of rows.

    {"text": "..."}                            perplexity is measured on the whole text
    {"prompt": "...", "completion": "..."}     greedy continuation of the prompt; completion is optional

A prompt's given completion is what the engine's greedy continuation is judged against; without one, the fp32
model's own greedy output is (the usual case: "does the quantized engine say what fp32 says"). The build reports
how well fp32 itself follows the given completions, since that bounds what any quantized engine can reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engineforge.data import read_jsonl_rows
from engineforge.errors import DataError

_EXAMPLE = '{"text": "..."} or {"prompt": "...", "completion": "..."}'


@dataclass(frozen=True)
class LMPrompt:
    prompt: str
    completion: str | None = None


@dataclass(frozen=True)
class LMEvalData:
    path: Path
    texts: tuple[str, ...]  # perplexity
    prompts: tuple[LMPrompt, ...]  # greedy continuation

    @property
    def prompt_texts(self) -> list[str]:
        return [p.prompt for p in self.prompts]

    def summary(self) -> dict[str, object]:
        return {"path": str(self.path), "texts": len(self.texts), "prompts": len(self.prompts),
                "completions_given": sum(p.completion is not None for p in self.prompts)}


def read_lm_eval_data(path: Path) -> LMEvalData:
    """Parse `path`; every problem is a DataError naming the file, the line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"LM eval data {path} does not exist: pass a JSONL file with rows like {_EXAMPLE} "
                        "(--eval-data)")
    texts: list[str] = []
    prompts: list[LMPrompt] = []
    for number, row in read_jsonl_rows(path, _EXAMPLE):
        text, prompt = row.get("text"), row.get("prompt")
        if text is None and prompt is None:
            raise DataError(f"{path}:{number}: neither 'text' nor 'prompt' key (keys: {sorted(row)}); write "
                            f"{_EXAMPLE}")
        if text is not None:
            texts.append(_non_empty(text, "text", path, number))
        if prompt is not None:
            completion = row.get("completion")
            if completion is not None and not isinstance(completion, str):
                raise DataError(f"{path}:{number}: 'completion' must be a string (or left out)")
            prompts.append(LMPrompt(_non_empty(prompt, "prompt", path, number), completion))
    if not texts and not prompts:
        raise DataError(f"{path} holds no rows: add at least one {_EXAMPLE}")
    return LMEvalData(path, tuple(texts), tuple(prompts))


def _non_empty(value: object, key: str, path: Path, number: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}:{number}: {key!r} must be a non-empty string, got {value!r}")
    return value
