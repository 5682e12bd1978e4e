"""The `openvino-genai` LM runtime on real builds of tiny trained LMs of every layout: the stateful IR reproduces the
torch engine (greedy tokens, log-probs); NNCF int8/int4 shrink it and keep the group size; GenAI's continuous
batching gives sequences joining mid-way, and ones cancelled, what they get alone; limits and seeded sampling."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engineforge.build.lm import openvino_builder
from engineforge.build.lm.builders import LMCandidate, lm_builder
from engineforge.build.lm.openvino_builder import sliding_window
from engineforge.errors import CheckpointError, EngineLoadError
from engineforge.lm.bundle import LMEngineSpec
from engineforge.lm.engine import CANCELLED, EOS, LENGTH, InvalidGenerationRequest, SamplingParams, TokenEvent
from engineforge.lm.generation import generate
from engineforge.lm.openvino_genai_runtime import LAYOUT_FILE, MODEL_XML, cache_gigabytes
from engineforge.lm.runtimes import open_lm_engine
from tests.helpers.lm_limits import assert_refuses_unservable_prompts
from tests.helpers.lm_reference import TinyLMReference, assert_seeded_sampling_repeats, run_events
from tests.helpers.tiny_lm import LM_PROMPTS, LM_TEXTS

OV = "openvino-genai"
NEVER = [10_000 - 1]  # an id the tiny models cannot emit: sequences run to max_tokens


class Tiny(TinyLMReference):
    """A tiny LM (its torch reference) and an fp32 `openvino-genai` build."""

    def __init__(self, root: Path, layout: str) -> None:
        super().__init__(root, layout)
        self.model_dir = root / f"{layout}-ov" / "model"
        self.details = lm_builder(OV).build(self.hf_dir, LMCandidate(OV, "fp32"), self.model_dir, 1)

    def engine(self, max_batch: int = 4, eos: list[int] | None = None, model_dir: Path | None = None,
               precision: str = "fp32") -> object:
        spec = LMEngineSpec(OV, precision, self.layout, 256, tuple(eos or [self.eos]), max_batch=max_batch,
                            threads=1)
        return open_lm_engine(spec, model_dir or self.model_dir, threads=1, max_batch=max_batch)


def _tiny(layout: str) -> Callable[..., Tiny]:
    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
        return Tiny(tmp_path_factory.mktemp(f"lm-ov-{layout}"), layout)
    return fixture


llama = _tiny("llama")
qwen2 = _tiny("qwen2")
gpt2 = _tiny("gpt2")
mistral = _tiny("mistral")
phi3 = _tiny("phi3")
LAYOUTS = ["llama", "qwen2", "gpt2", pytest.param("mistral", marks=pytest.mark.slow),
           pytest.param("phi3", marks=pytest.mark.slow)]


def _greedy(engine: object, tiny: Tiny, prompt: str, n: int = 40) -> tuple[list[int], str | None]:
    pieces = list(generate(engine, tiny.tokenizer, tiny.ids(prompt), SamplingParams(max_tokens=n)))
    return [t for p in pieces for t in p.token_ids], pieces[-1].finish_reason


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fp32_greedy_tokens_and_log_probs_match_torch(layout: str, request: pytest.FixtureRequest) -> None:
    tiny: Tiny = request.getfixturevalue(layout)
    assert tiny.details["ir_vs_torch_relative_logit_diff"] < 1e-4
    engine = tiny.engine()
    outputs = []
    for prompt in LM_PROMPTS[:3]:
        ours = _greedy(engine, tiny, prompt)
        assert ours == _greedy(tiny.torch, tiny, prompt), prompt
        outputs.append(tuple(ours[0]))
    assert len(set(outputs)) == 3  # the model is not degenerate
    ids = tiny.ids(LM_TEXTS[0] + "<|end|>")
    np.testing.assert_allclose(engine.log_probs(ids), tiny.torch.log_probs(ids), atol=1e-3)


@pytest.mark.parametrize(("precision", "group"), [("int8", None), ("int4", 16)])
def test_compressed_builds_shrink_keep_their_group_and_still_answer(llama: Tiny, tmp_path: Path, precision: str,
                                                                   group: int | None) -> None:
    details = lm_builder(OV).build(llama.hf_dir, LMCandidate(OV, precision, group), tmp_path / "model", 1)
    assert details["group_size"] == group and 0 < details["size_mb"] < llama.details["size_mb"]
    layout = json.loads((tmp_path / "model" / LAYOUT_FILE).read_text())
    assert layout["max_length"] == 256 and layout["kv_heads"] == 2 and layout["head_dim"] == 16
    if group:  # NNCF's int4 blocks: the weight scales hold one value per `group` inputs
        assert f"group {group}" in details["compression"]
    engine = llama.engine(model_dir=tmp_path / "model", precision=precision)
    tokens, reason = _greedy(engine, llama, LM_PROMPTS[0], 8)
    assert reason in (EOS, LENGTH) and 1 <= len(tokens) <= 8
    assert engine.settings()["precision"] == precision


def test_sequences_joining_and_cancelled_get_what_they_get_alone(llama: Tiny) -> None:
    prompts = LM_PROMPTS[:3]
    alone = {}
    for prompt in prompts:
        engine = llama.engine(max_batch=1, eos=NEVER)
        seq = engine.add(llama.ids(prompt), SamplingParams(max_tokens=12))
        alone[prompt] = [e.token_id for e in run_events(engine, [seq])[seq]]
    engine = llama.engine(eos=NEVER)
    params = SamplingParams(max_tokens=12)
    first, doomed = engine.add(llama.ids(prompts[0]), params), engine.add(llama.ids(prompts[1]), params)
    engine.step()
    engine.step()
    late = engine.add(llama.ids(prompts[2]), params)  # joins while the others decode
    engine.cancel(doomed)
    events = run_events(engine, [first, doomed, late])
    assert [e.token_id for e in events[first]] == alone[prompts[0]][2:]
    assert [e.token_id for e in events[late]] == alone[prompts[2]]
    assert events[doomed] == [TokenEvent(doomed, None, CANCELLED)]
    assert events[first][-1].finish_reason == LENGTH and not engine.has_work()


def test_limits_seeded_sampling_and_eos(llama: Tiny) -> None:
    engine = llama.engine()
    assert_refuses_unservable_prompts(engine)

    assert_seeded_sampling_repeats(engine, llama.ids(LM_PROMPTS[1]))
    seqs = [engine.add(llama.ids(p), SamplingParams(max_tokens=60)) for p in LM_PROMPTS[:4]]
    ends = run_events(engine, seqs)
    assert {events[-1].finish_reason for events in ends.values()} == {EOS}
    assert all(events[-1].token_id == llama.eos for events in ends.values())


def test_a_bad_trace_and_a_foreign_folder_are_refused_with_the_fix(llama: Tiny, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_builder, "_check_against_torch", lambda *args: 0.5)
    with pytest.raises(CheckpointError, match=r"differs from torch by 0\.5 .* build it with the onnxruntime"):
        lm_builder(OV).build(llama.hf_dir, LMCandidate(OV, "fp32"), tmp_path / "bad", 1)
    assert not (tmp_path / "bad" / MODEL_XML).exists()
    (tmp_path / "foreign").mkdir()
    with pytest.raises(EngineLoadError, match="not an openvino-genai engine folder; rebuild"):
        llama.engine(model_dir=tmp_path / "foreign")


def test_a_sliding_window_model_is_served_within_its_window(mistral: Tiny, tmp_path: Path) -> None:
    windowed = tmp_path / "windowed"
    shutil.copytree(mistral.hf_dir, windowed)
    config = json.loads((windowed / "config.json").read_text())
    (windowed / "config.json").write_text(json.dumps(config | {"sliding_window": 64}))
    details = lm_builder(OV).build(windowed, LMCandidate(OV, "fp32"), tmp_path / "model", 1)
    assert details["max_length"] == 64  # the LM build's spec (and the limits published from it) take it
    assert json.loads((tmp_path / "model" / LAYOUT_FILE).read_text())["max_length"] == 64
    engine = mistral.engine(model_dir=tmp_path / "model")
    with pytest.raises(InvalidGenerationRequest, match="exceeds the model's 64 positions"):
        engine.add(mistral.ids(LM_PROMPTS[0]), SamplingParams(max_tokens=60))
    assert sliding_window({"sliding_window": 4096, "use_sliding_window": False}) is None
    assert sliding_window({"sliding_window": 4096, "layer_types": ["full_attention"]}) is None


def test_the_kv_cache_cap_covers_every_sequence_at_its_longest() -> None:
    per_token = 2 * 30 * 3 * 64 * 4  # SmolLM2-135M in f32
    assert cache_gigabytes(per_token, 8, 8192) == 4 and cache_gigabytes(per_token, 1, 256) == 1
