"""The `onnxruntime` LM runtime (the model builder's graph with engineforge's continuous batching) on real builds of
tiny trained LMs: it reproduces the torch engine; sequences decoding together, joining mid-way, leaving (their rows
compacted) or outgrowing the KV buffer each get exactly the tokens they get alone; limits and seeded sampling."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engineforge.build.lm.builders import LMCandidate, lm_builder
from engineforge.lm import kv_slots
from engineforge.lm.bundle import LMEngineSpec, open_lm_bundle
from engineforge.lm.engine import CANCELLED, EOS, LENGTH, SamplingParams, TokenEvent
from engineforge.lm.generation import generate
from engineforge.lm.runtimes import open_lm_engine
from tests.helpers.lm_limits import assert_refuses_unservable_prompts
from tests.helpers.lm_reference import TinyLMReference, assert_seeded_sampling_repeats, run_events
from tests.helpers.tiny_lm import LM_PROMPTS, LM_TEXTS

ORT = "onnxruntime"


class Tiny(TinyLMReference):
    """A tiny LM (its torch reference) and an fp32 `onnxruntime` bundle."""

    def __init__(self, root: Path, layout: str) -> None:
        super().__init__(root, layout)
        self.bundle = root / f"{layout}-ort"
        lm_builder(ORT).build(self.hf_dir, LMCandidate(ORT, "fp32"), self.bundle / "model", 1)
        self.tokenizer.save_pretrained(str(self.bundle / "tokenizer"))
        LMEngineSpec(ORT, "fp32", layout, 256, (self.eos,), max_batch=4, threads=1).save(self.bundle)

    def engine(self, max_batch: int = 4, eos: list[int] | None = None) -> object:
        spec = LMEngineSpec.load(self.bundle)
        if eos is not None:  # an id the model never emits: every sequence runs to max_tokens
            spec = LMEngineSpec(ORT, "fp32", spec.family, spec.max_length, tuple(eos), max_batch=max_batch, threads=1)
        return open_lm_engine(spec, self.bundle / "model", threads=1, max_batch=max_batch)


def _tiny(layout: str) -> Callable[..., Tiny]:
    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
        return Tiny(tmp_path_factory.mktemp(f"lm-ort-{layout}"), layout)
    return fixture


llama = _tiny("llama")
qwen2 = _tiny("qwen2")
NEVER = [10_000 - 1]  # not emitted by the tiny models in these lengths: sequences run to max_tokens


def _alone(tiny: Tiny, prompt: str, n: int) -> list[int]:
    engine = tiny.engine(max_batch=1, eos=NEVER)
    seq = engine.add(tiny.ids(prompt), SamplingParams(max_tokens=n))
    return [e.token_id for e in run_events(engine, [seq])[seq]]


@pytest.mark.parametrize("layout", ["llama", "qwen2"])
def test_greedy_tokens_and_log_probs_match_torch(layout: str, request: pytest.FixtureRequest) -> None:
    tiny: Tiny = request.getfixturevalue(layout)
    _, engine, _ = open_lm_bundle(tiny.bundle)
    assert engine.runtime == ORT and engine.settings()["batching"].startswith("continuous")
    outputs = []
    for prompt in LM_PROMPTS[:3]:
        ours = [t for p in generate(engine, tiny.tokenizer, tiny.ids(prompt), SamplingParams(max_tokens=40))
                for t in p.token_ids]
        assert ours == [t for p in generate(tiny.torch, tiny.tokenizer, tiny.ids(prompt),
                                            SamplingParams(max_tokens=40)) for t in p.token_ids], prompt
        outputs.append(tuple(ours))
    assert len(set(outputs)) == 3  # the model is not degenerate
    ids = tiny.ids(LM_TEXTS[0])
    np.testing.assert_allclose(engine.log_probs(ids), tiny.torch.log_probs(ids), atol=1e-3)


def test_rows_of_different_lengths_joining_and_leaving_get_the_tokens_they_get_alone(llama: Tiny) -> None:
    prompts = LM_PROMPTS[:4]
    alone = {p: _alone(llama, p, 14) for p in prompts}
    assert len({len(llama.ids(p)) for p in prompts}) > 1  # rows of different lengths share the calls
    engine = llama.engine(eos=NEVER)
    params = SamplingParams(max_tokens=14)
    first, second = engine.add(llama.ids(prompts[0]), params), engine.add(llama.ids(prompts[1]), params)
    engine.step()
    engine.step()
    late = engine.add(llama.ids(prompts[2]), params)  # joins two steps later: first token at the next step
    joined = engine.step()
    assert {e.seq_id for e in joined if e.token_id is not None} == {first, second, late}
    engine.cancel(first)  # row 0 leaves: the last row's cache moves into it
    last = engine.add(llama.ids(prompts[3]), params)
    events = run_events(engine, [first, second, late, last])
    assert events[first] == [TokenEvent(first, None, CANCELLED)]
    assert [e.token_id for e in events[second]] == alone[prompts[1]][3:]
    assert [late_event.token_id for late_event in [*[e for e in joined if e.seq_id == late], *events[late]]] \
        == alone[prompts[2]]
    assert [e.token_id for e in events[last]] == alone[prompts[3]]
    assert all(events[s][-1].finish_reason == LENGTH for s in (second, late, last))


def test_the_kv_buffer_grows_without_changing_any_sequence(llama: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = LM_PROMPTS[:2]
    alone = {p: _alone(llama, p, 40) for p in prompts}
    monkeypatch.setattr(kv_slots, "MIN_CAPACITY", 8)  # grows 8 -> 16 -> 32 -> 64 while they decode
    engine = llama.engine(eos=NEVER)
    assert engine.kv.capacity == 8
    seqs = [engine.add(llama.ids(p), SamplingParams(max_tokens=40)) for p in prompts]
    events = run_events(engine, seqs)
    assert engine.kv.capacity == 64
    for seq, prompt in zip(seqs, prompts, strict=True):
        assert [e.token_id for e in events[seq]] == alone[prompt]


def test_more_sequences_than_rows_wait_for_a_free_row(llama: Tiny) -> None:
    engine = llama.engine(max_batch=2, eos=NEVER)
    short, long_, waiting = (engine.add(llama.ids(LM_PROMPTS[i]), SamplingParams(max_tokens=n))
                             for i, n in ((0, 2), (1, 6), (2, 3)))
    assert {e.seq_id for e in engine.step()} == {short, long_}
    second = engine.step()  # `short` ends here; its row frees and `waiting` is prefilled in the same step
    assert {(e.seq_id, e.finish_reason) for e in second} >= {(short, LENGTH), (waiting, None)}
    events = run_events(engine, [short, long_, waiting])
    tokens = [e.token_id for e in second if e.seq_id == waiting] + [e.token_id for e in events[waiting]]
    assert tokens == _alone(llama, LM_PROMPTS[2], 3)


def test_limits_and_seeded_sampling(llama: Tiny) -> None:
    engine = llama.engine()
    assert_refuses_unservable_prompts(engine)

    assert_seeded_sampling_repeats(engine, llama.ids(LM_PROMPTS[1]))
    seqs = [engine.add(llama.ids(p), SamplingParams(max_tokens=60)) for p in LM_PROMPTS[:4]]
    assert EOS in {events[-1].finish_reason for events in run_events(engine, seqs).values()}


def test_a_prompt_prefilled_in_chunks_gets_the_tokens_it_gets_in_one_call(
        llama: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    from engineforge.lm import ort_decoder_runtime

    prompt = " ".join(LM_TEXTS[:3])
    whole = _alone(llama, prompt, 12)
    monkeypatch.setattr(ort_decoder_runtime, "PREFILL_CHUNK", 5)  # the prompt goes in as several calls
    assert len(llama.ids(prompt)) > 15
    assert _alone(llama, prompt, 12) == whole
    engine = llama.engine()
    ids = llama.ids(prompt)
    np.testing.assert_allclose(engine.log_probs(ids), llama.torch.log_probs(ids), atol=1e-3)
