"""The LM driver's logic without a real model: incremental detokenization, stop strings, sampling, request
parameters, and the scheduler's routing of interleaved sequences (a scripted engine stands in for a runtime)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from engineforge.lm.detokenize import Detokenizer
from engineforge.lm.engine import CANCELLED, EOS, LENGTH, STOP, InvalidGenerationRequest, SamplingParams, TokenEvent
from engineforge.lm.generation import Generation, Scheduler, generate
from engineforge.lm.sampling import choose_token, new_rng


@pytest.fixture(scope="module")
def tokenizer():
    from tests.helpers.tiny_lm import _tokenizer

    return _tokenizer(320)


def test_incremental_detokenization_equals_decoding_at_once_even_inside_a_character(tokenizer) -> None:
    text = " refunds in five days: café ünïcödé 你好 and emoji 🙂 done"
    ids = tokenizer(text).input_ids
    assert len(ids) > len(text.split())  # the multi-byte characters are split across byte-level tokens
    detok = Detokenizer(tokenizer, tokenizer("the order").input_ids)
    pieces = [detok.add(t) for t in ids] + [detok.flush()]
    assert "".join(pieces) == tokenizer.decode(ids) and not any("\ufffd" in p for p in pieces)


def _run(tokenizer, text: str, stop: tuple[str, ...]) -> tuple[str, str | None, list[str]]:
    generation = Generation([], SamplingParams(max_tokens=100, stop=stop), Detokenizer(tokenizer))
    ids, sent = tokenizer(text).input_ids, []
    for i, token in enumerate(ids):
        piece = generation.on_token(token, LENGTH if i == len(ids) - 1 else None)
        if piece is not None:
            sent.append(piece.text)
        if generation.finish_reason is not None:
            break
    return generation.text, generation.finish_reason, sent


def test_a_stop_string_ends_the_text_before_it_and_is_never_sent(tokenizer) -> None:
    text, reason, sent = _run(tokenizer, "your order has shipped. END of message", ("END",))
    assert (text, reason) == ("your order has shipped. ", STOP)
    assert "".join(sent) == text and not any("E" in s for s in sent)  # a possible start of the stop is held back
    text, reason, _ = _run(tokenizer, "no stop string here", ("END",))
    assert (text, reason) == ("no stop string here", LENGTH)


def test_request_parameters_are_validated_with_the_fix() -> None:
    for bad in ({"max_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_k": -2}, {"seed": -1},
                {"stop": ("",)}):
        with pytest.raises(InvalidGenerationRequest):
            SamplingParams(**bad)  # type: ignore[arg-type]
    assert SamplingParams().greedy and not SamplingParams(temperature=0.7).greedy


def test_sampling_greedy_top_k_top_p_and_seeds() -> None:
    logits = np.array([0.1, 3.0, 2.9, -1.0, 0.0])
    assert choose_token(logits, SamplingParams(), new_rng(SamplingParams())) == 1
    top1 = SamplingParams(temperature=1.0, top_k=1, seed=0)
    assert {choose_token(logits, top1, new_rng(top1)) for _ in range(20)} == {1}
    nucleus = SamplingParams(temperature=1.0, top_p=0.6, seed=3)
    rng = new_rng(nucleus)
    assert {choose_token(logits, nucleus, rng) for _ in range(200)} <= {1, 2}
    seeded = SamplingParams(temperature=1.0, seed=7)
    draws = [[choose_token(logits, seeded, rng) for _ in range(30)] for rng in (new_rng(seeded), new_rng(seeded))]
    assert draws[0] == draws[1] and len(set(draws[0])) > 1


class ScriptedEngine:
    """Emits each sequence's scripted tokens, one per step, all active sequences together."""

    runtime, max_batch, max_length, eos_token_ids = "scripted", 8, 64, frozenset({0})

    def __init__(self, scripts: dict[tuple[int, ...], list[int]]) -> None:
        self.scripts, self.active, self.next_id, self.cancelled = scripts, {}, 0, set()
        self.steps_with: list[int] = []

    def add(self, prompt_ids: Sequence[int], params: SamplingParams) -> int:
        self.active[self.next_id] = list(self.scripts[tuple(prompt_ids)])[: params.max_tokens]
        self.next_id += 1
        return self.next_id - 1

    def cancel(self, seq_id: int) -> None:
        self.cancelled.add(seq_id)

    def has_work(self) -> bool:
        return bool(self.active)

    def step(self) -> list[TokenEvent]:
        events = [TokenEvent(s, None, CANCELLED) for s in self.cancelled if self.active.pop(s, None) is not None]
        self.cancelled.clear()
        self.steps_with.append(len(self.active))
        for seq_id, left in list(self.active.items()):
            token = left.pop(0)
            reason = EOS if token == 0 else (LENGTH if not left else None)
            events.append(TokenEvent(seq_id, token, reason))
            if reason:
                del self.active[seq_id]
        return events

    def log_probs(self, ids: Sequence[int]) -> list[float]:
        return [0.0] * (len(ids) - 1)

    def settings(self) -> dict:
        return {}


def test_the_scheduler_routes_interleaved_sequences_and_batches_them(tokenizer) -> None:
    a, b = tokenizer(" refunds are processed").input_ids, tokenizer(" your order has shipped").input_ids
    engine = ScriptedEngine({(1,): [*a, 0], (2,): b})
    scheduler = Scheduler(engine, tokenizer)
    got: dict[str, list] = {"a": [], "b": []}
    done = threading.Semaphore(0)

    def receiver(name: str):
        def take(piece) -> None:
            got[name].append(piece)
            if piece.finish_reason:
                done.release()
        return take
    scheduler.submit([1], SamplingParams(max_tokens=50), receiver("a"))
    scheduler.submit([2], SamplingParams(max_tokens=50), receiver("b"))
    assert done.acquire(timeout=10) and done.acquire(timeout=10)
    scheduler.close()
    assert "".join(p.text for p in got["a"]) == " refunds are processed" and got["a"][-1].finish_reason == EOS
    assert "".join(p.text for p in got["b"]) == " your order has shipped" and got["b"][-1].finish_reason == LENGTH
    assert [t for p in got["a"] for t in p.token_ids] == [*a, 0]
    assert max(engine.steps_with) == 2  # both sequences decoded in the same steps
    assert scheduler.active == 0


def test_generate_stops_at_a_stop_string_and_frees_the_sequence(tokenizer) -> None:
    ids = tokenizer(" refunds are processed within five days").input_ids
    engine = ScriptedEngine({(1,): ids})
    pieces = list(generate(engine, tokenizer, [1], SamplingParams(max_tokens=50, stop=("five",))))
    assert "".join(p.text for p in pieces) == " refunds are processed within "
    assert pieces[-1].finish_reason == STOP and not engine.has_work()
