"""What the LM runtime tests share: a tiny trained LM with its tokenizer and the torch engine every runtime is held
to, running an engine until its sequences end, and what seeded sampling must do on any engine."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engineforge.lm.engine import SamplingParams, TokenEvent
from engineforge.lm.torch_engine import TorchLMEngine

from .tiny_lm import make_tiny_lm


class TinyLMReference:
    """A tiny LM of `layout` at root/layout: its HF dir, tokenizer, EOS id and torch reference engine."""

    def __init__(self, root: Path, layout: str, steps: int = 120) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.layout = layout
        self.hf_dir = make_tiny_lm(root / layout, layout, steps=steps)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.hf_dir))
        self.eos = self.tokenizer.eos_token_id
        self.torch = TorchLMEngine(AutoModelForCausalLM.from_pretrained(str(self.hf_dir)), [self.eos])

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text).input_ids


def run_events(engine: Any, seqs: Iterable[int]) -> dict[int, list[TokenEvent]]:
    """Step `engine` until it has no work; each sequence's events in order."""
    events: dict[int, list[TokenEvent]] = {seq: [] for seq in seqs}
    while engine.has_work():
        for event in engine.step():
            events[event.seq_id].append(event)
    return events


def assert_seeded_sampling_repeats(engine: Any, prompt_ids: list[int]) -> None:
    """The same seed gives the same tokens; different seeds do not all agree."""
    def sample(seed: int) -> tuple[int | None, ...]:
        seq = engine.add(prompt_ids, SamplingParams(max_tokens=12, temperature=1.5, top_k=50, top_p=0.95, seed=seed))
        return tuple(e.token_id for e in run_events(engine, [seq])[seq])

    runs = [sample(seed) for seed in (1, 2, 3)]
    assert sample(1) == runs[0] and len(set(runs)) > 1
