"""The onnxruntime-genai LM runtime on real builds of tiny trained LMs: fp32 reproduces the torch engine (greedy
tokens, log-probs), int4/int8 honour their group size and shrink the model, og.Engine's batching, cancellation,
limits and seeded sampling, and a GGUF input read back as a Hugging Face directory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engineforge.build.lm.builders import LMCandidate, lm_builder
from engineforge.build.lm.checkpoint import read_lm_checkpoint
from engineforge.lm.bundle import LMEngineSpec, open_lm_bundle
from engineforge.lm.engine import CANCELLED, EOS, LENGTH, SamplingParams, TokenEvent
from engineforge.lm.generation import generate
from engineforge.lm.runtimes import open_lm_engine
from tests.helpers.lm_limits import assert_refuses_unservable_prompts
from tests.helpers.lm_reference import TinyLMReference, run_events
from tests.helpers.tiny_gguf import write_llama_gguf
from tests.helpers.tiny_lm import LM_PROMPTS, LM_TEXTS

ORT = "onnxruntime-genai"
PROMPTS = LM_PROMPTS[:3]


class Family(TinyLMReference):
    """One tiny LM (its torch reference) and an fp32 onnxruntime-genai bundle."""

    def __init__(self, root: Path, layout: str, steps: int) -> None:
        super().__init__(root, layout, steps)
        self.bundle = root / f"{layout}-fp32"
        self.details = lm_builder(ORT).build(self.hf_dir, LMCandidate(ORT, "fp32"), self.bundle / "model", 1)
        self.tokenizer.save_pretrained(str(self.bundle / "tokenizer"))
        LMEngineSpec(ORT, "fp32", layout, 256, (self.eos,), max_batch=4, threads=1).save(self.bundle)
        _, self.engine, _ = open_lm_bundle(self.bundle)


def _family(layout: str, steps: int = 120) -> Callable[..., Family]:
    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Family:
        return Family(tmp_path_factory.mktemp(f"lm-{layout}"), layout, steps)
    return fixture


llama = _family("llama")
qwen2 = _family("qwen2")
mistral = _family("mistral", steps=60)
phi3 = _family("phi3", steps=60)
FAMILIES = ["llama", "qwen2", pytest.param("mistral", marks=pytest.mark.slow),
            pytest.param("phi3", marks=pytest.mark.slow)]


def _pieces(engine: Any, family: Family, prompt: str, params: SamplingParams) -> tuple[list[int], str | None]:
    pieces = list(generate(engine, family.tokenizer, family.ids(prompt), params))
    return [t for p in pieces for t in p.token_ids], pieces[-1].finish_reason


@pytest.mark.parametrize("layout", FAMILIES)
def test_fp32_greedy_tokens_and_log_probs_match_torch(layout: str, request: pytest.FixtureRequest) -> None:
    family: Family = request.getfixturevalue(layout)
    params = SamplingParams(max_tokens=40)
    outputs = []
    for prompt in PROMPTS:
        ours = _pieces(family.engine, family, prompt, params)
        assert ours == _pieces(family.torch, family, prompt, params), prompt
        outputs.append(ours)
    assert len({tuple(tokens) for tokens, _ in outputs}) == len(PROMPTS)  # the model is not degenerate
    for text in LM_TEXTS[:2]:
        ids = family.ids(text + "<|end|>")
        ours, reference = np.array(family.engine.log_probs(ids)), np.array(family.torch.log_probs(ids))
        assert ours.shape == (len(ids) - 1,)
        np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_greedy_generation_ends_on_eos(llama: Family) -> None:
    reasons = {_pieces(llama.engine, llama, p, SamplingParams(max_tokens=60))[1] for p in LM_PROMPTS[:4]}
    assert EOS in reasons


def test_threads_and_batch_size_reach_the_engine(llama: Family) -> None:
    genai = json.loads((llama.bundle / "model" / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 1
    assert llama.engine.settings()["threads"] == 1 and llama.engine.max_batch == 4
    spec = LMEngineSpec.load(llama.bundle)
    engine = open_lm_engine(spec, llama.bundle / "model", threads=2, max_batch=3)
    assert (engine.settings()["threads"], engine.max_batch, engine.max_length) == (2, 3, 256)
    seqs = [engine.add(llama.ids(p), SamplingParams(max_tokens=4)) for p in LM_PROMPTS[:6]]
    assert {e.seq_id for e in engine.step()} == set(seqs[:3])  # three decode together, three wait
    engine.cancel(seqs[5])
    assert TokenEvent(seqs[5], None, CANCELLED) in engine.step()
    events = run_events(engine, seqs)
    assert all(events[seq][-1].finish_reason in (EOS, LENGTH) for seq in seqs[:5])


@pytest.mark.parametrize(("precision", "group"), [("int4", 32), ("int8", 64)])
def test_quantized_build_honours_its_group_size_and_shrinks(llama: Family, tmp_path: Path, precision: str,
                                                           group: int) -> None:
    details = lm_builder(ORT).build(llama.hf_dir, LMCandidate(ORT, precision, group), tmp_path / "model", 1)
    assert details["group_size"] == group and details["matmulnbits_block_sizes"] == [group]
    assert details["builder_options"]["block_size"] == group
    assert 0 < details["size_mb"] < llama.details["size_mb"]
    spec = LMEngineSpec(ORT, precision, "llama", 256, (llama.eos,), group_size=group)
    engine = open_lm_engine(spec, tmp_path / "model", threads=1, max_batch=2)
    tokens, reason = _pieces(engine, llama, PROMPTS[0], SamplingParams(max_tokens=8))
    assert reason in (EOS, LENGTH) and 1 <= len(tokens) <= 8
    assert engine.settings()["precision"] == precision


def test_sequences_added_at_different_steps_match_running_alone(llama: Family) -> None:
    engine, params = llama.engine, SamplingParams(max_tokens=10)
    alone = []
    for prompt in PROMPTS[:2]:
        seq = engine.add(llama.ids(prompt), params)
        alone.append([e.token_id for e in run_events(engine, [seq])[seq]])
    first = engine.add(llama.ids(PROMPTS[0]), params)
    engine.step()
    engine.step()
    second = engine.add(llama.ids(PROMPTS[1]), params)
    events = run_events(engine, [first, second])
    # the two steps taken before `second` joined gave `first` its first two tokens
    assert [e.token_id for e in events[first]] == alone[0][2:]
    assert [e.token_id for e in events[second]] == alone[1]
    assert events[first][-1].finish_reason == LENGTH and events[second][-1].finish_reason == LENGTH


def test_a_sequence_added_while_a_batch_decodes_starts_at_the_next_step(llama: Family) -> None:
    """og.Engine on CPU batches statically: a turn begun mid-batch would wait for the whole batch to drain. The
    engine starts it on its own generator instead, so its first token comes from the very next step."""
    engine, params = llama.engine, SamplingParams(max_tokens=12)
    first = engine.add(llama.ids(PROMPTS[0]), params)
    engine.step()
    second = engine.add(llama.ids(PROMPTS[1]), params)
    step = engine.step()
    assert {e.seq_id for e in step if e.token_id is not None} == {first, second}
    run_events(engine, [first, second])


def test_sequences_added_together_decode_in_the_same_steps(llama: Family) -> None:
    engine = llama.engine
    seqs = [engine.add(llama.ids(p), SamplingParams(max_tokens=5)) for p in PROMPTS]
    first_step = engine.step()
    assert {e.seq_id for e in first_step} == set(seqs)
    run_events(engine, seqs)


def test_cancel_ends_a_sequence_with_a_cancelled_event(llama: Family) -> None:
    engine = llama.engine
    seq = engine.add(llama.ids(PROMPTS[0]), SamplingParams(max_tokens=30))
    assert engine.step()[0].token_id is not None
    engine.cancel(seq)
    events = run_events(engine, [seq])[seq]
    assert events[-1] == TokenEvent(seq, None, CANCELLED) and len(events) <= 1
    seeded = engine.add(llama.ids(PROMPTS[1]), SamplingParams(max_tokens=30, temperature=1.0, seed=7))
    engine.step()
    engine.cancel(seeded)
    assert run_events(engine, [seeded])[seeded] == [TokenEvent(seeded, None, CANCELLED)]
    assert not engine.has_work()


def test_prompts_the_model_cannot_take_are_refused(llama: Family) -> None:
    engine = llama.engine
    assert_refuses_unservable_prompts(engine)


def test_seeded_sampling_is_reproducible_and_seed_dependent(llama: Family) -> None:
    def sample(seed: int) -> tuple[int, ...]:
        params = SamplingParams(max_tokens=12, temperature=1.5, top_k=50, top_p=0.95, seed=seed)
        return tuple(_pieces(llama.engine, llama, PROMPTS[1], params)[0])

    runs = [sample(seed) for seed in (1, 2, 3, 4)]
    assert sample(1) == runs[0]
    assert len(set(runs)) > 1
    unseeded = _pieces(llama.engine, llama, PROMPTS[1], SamplingParams(max_tokens=6, temperature=1.0))
    assert unseeded[1] in (EOS, LENGTH) and len(unseeded[0]) >= 1


def test_gguf_input_is_read_back_as_the_same_model(llama: Family, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = write_llama_gguf(llama.hf_dir, tmp_path / "tiny-llama-f32.gguf")
    checkpoint = read_lm_checkpoint(gguf_file, tmp_path / "work")
    assert (checkpoint.source, checkpoint.family.name) == ("gguf", "llama")
    assert checkpoint.hf_dir.parent == tmp_path / "work"
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.hf_dir))
    text = LM_TEXTS[0]
    assert tokenizer(text).input_ids == llama.ids(text)
    ids = torch.tensor([llama.ids(text)])
    converted = AutoModelForCausalLM.from_pretrained(str(checkpoint.hf_dir))
    with torch.inference_mode():
        torch.testing.assert_close(converted(ids).logits, llama.torch.model(ids).logits, atol=1e-5, rtol=0)


def test_scheduler_serves_concurrent_requests_and_stop_strings(llama: Family) -> None:
    import threading

    from engineforge.lm.generation import Scheduler

    greedy = SamplingParams(max_tokens=40)
    full = llama.tokenizer.decode(_pieces(llama.engine, llama, PROMPTS[0], greedy)[0], skip_special_tokens=True)
    stop = full.split()[2]  # a word in the middle of the greedy continuation
    requests = {"stop": (PROMPTS[0], SamplingParams(max_tokens=40, stop=(stop,))), "plain": (PROMPTS[1], greedy)}
    texts: dict[str, str] = {name: "" for name in requests}
    reasons: dict[str, str] = {}
    done = threading.Event()
    scheduler = Scheduler(llama.engine, llama.tokenizer)

    def receiver(name: str) -> Callable[[Any], None]:
        def receive(piece: Any) -> None:
            texts[name] += piece.text
            if piece.finish_reason is not None:
                reasons[name] = piece.finish_reason
                if len(reasons) == len(requests):
                    done.set()
        return receive

    try:
        for name, (prompt, params) in requests.items():
            scheduler.submit(llama.ids(prompt), params, receiver(name))
        assert done.wait(60), reasons
    finally:
        scheduler.close()
    assert reasons["stop"] == "stop", texts
    assert texts["stop"] == full[:full.index(stop)]
    alone = _pieces(llama.engine, llama, PROMPTS[1], greedy)
    assert texts["plain"] == llama.tokenizer.decode(alone[0], skip_special_tokens=True)
    assert reasons["plain"] == alone[1]
    assert not llama.engine.has_work()
