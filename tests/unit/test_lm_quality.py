"""LM quality measures without a model: eval-data parsing, perplexity and greedy-agreement arithmetic, the budget and
the messages a build fails with."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from engineforge.build.lm.eval_data import LMPrompt, read_lm_eval_data
from engineforge.build.lm.presets import LM_PRESET_NAMES, lm_preset_candidates
from engineforge.build.lm.quality import (
    LMBudget,
    agreement,
    compare_lm,
    completion_ids,
    first_difference,
    perplexity,
    shorten_prompt,
)
from engineforge.errors import ConfigError, DataError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "eval.jsonl"
    path.write_text(text)
    return path


def test_eval_data_reads_texts_and_prompts_with_optional_completion(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"text": "a b c"}\n\n{"prompt": "hi", "completion": " there"}\n{"prompt": "yo"}\n')
    data = read_lm_eval_data(path)
    assert data.texts == ("a b c",)
    assert data.prompts == (LMPrompt("hi", " there"), LMPrompt("yo"))
    assert data.summary()["completions_given"] == 1


@pytest.mark.parametrize(("content", "expected"), [
    ('{"text": "ok"}\n{"text": broken}\n', ":2: not valid JSON"),
    ('{"text": "ok"}\n{"label": 1}\n', ":2: neither 'text' nor 'prompt'"),
    ('\n\n', "holds no rows"),
    ('["text"]\n', ":1: a list, not an object"),
    ('{"prompt": ""}\n', "'prompt' must be a non-empty string"),
    ('{"prompt": "x", "completion": 3}\n', "'completion' must be a string"),
])
def test_eval_data_problems_name_the_line_and_the_fix(tmp_path: Path, content: str, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        read_lm_eval_data(_write(tmp_path, content))


def test_missing_eval_data_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist: pass a JSONL file"):
        read_lm_eval_data(tmp_path / "nope.jsonl")


class _FixedEngine:
    """log p = log(0.5) for every predicted token."""

    max_length = 8

    def log_probs(self, ids: list[int]) -> list[float]:
        return [math.log(0.5)] * (len(ids) - 1)


class _SplitTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [len(word) for word in text.split()]}


def test_perplexity_is_exp_of_mean_nll_over_every_predicted_token() -> None:
    # Texts of 3 and 1 words: 2 predicted tokens and none (skipped); 0.5 each -> perplexity 2.
    assert perplexity(_FixedEngine(), _SplitTokenizer(), ["a b c", "single"]) == pytest.approx(2.0)
    with pytest.raises(DataError, match="two or more tokens"):
        perplexity(_FixedEngine(), _SplitTokenizer(), ["single"])


def test_agreement_compares_the_first_n_tokens_and_a_reference_ended_by_eos_over_its_length() -> None:
    assert first_difference([1, 2, 3], [1, 2, 3, 9], n=3) is None
    assert first_difference([1, 2, 3], [1, 5, 3], n=3) == 1
    assert first_difference([1, 2, 3, 4], [1, 2, 3, 5], n=3) is None  # beyond n
    assert first_difference([1, 0], [1, 0], n=16) is None  # both ended at EOS 0
    assert first_difference([1, 0], [1, 7, 8], n=16) == 1  # engine went on past fp32's EOS
    assert first_difference([1, 2, 3], [1, 2], n=16) == 2  # engine stopped early
    assert agreement([[1, 2], [3, 4], [5, 6], [7, 8]], [[1, 2], [3, 9], [5, 6], [7, 8]], n=2) == 0.75
    with pytest.raises(ValueError):
        agreement([[1]], [], n=1)


def test_budget_defaults_and_validation() -> None:
    budget = LMBudget()
    assert (budget.max_ppl_increase("int8"), budget.max_ppl_increase("int4"), budget.max_ppl_increase("nf4"),
            budget.max_ppl_increase("fp32"), budget.min_agreement) == (3.0, 8.0, 8.0, 1.0, 0.90)
    assert LMBudget.uniform(2.0, 0.5).max_ppl_increase("int4") == 2.0
    with pytest.raises(ConfigError, match=r"min_agreement=1\.5"):
        LMBudget(min_agreement=1.5)
    with pytest.raises(ConfigError, match="max_ppl_increase_int4=-1"):
        LMBudget(max_ppl_increase_int4=-1)
    with pytest.raises(ConfigError, match="no perplexity limit"):
        budget.max_ppl_increase("int2")


def test_comparison_names_the_worst_prompt_and_first_differing_token() -> None:
    prompts = ["refunds are", "your order", "the warranty"]
    comparison = compare_lm("int4", 10.0, 11.0, prompts, [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
                            [[1, 2, 0], [4, 99, 6], [7, 8, 9]], decode=lambda t: f"<{t}>", n=3)
    assert comparison.agreement == pytest.approx(1 / 3) and comparison.agreeing == 1
    assert comparison.perplexity_increase_pct == pytest.approx(10.0)
    assert (comparison.worst_prompt, comparison.worst_position) == ("your order", 1)  # earliest divergence
    chat = "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n" * 3 + "<|im_start|>user\nWhere is it?"
    assert shorten_prompt(chat).endswith("user\nWhere is it?") and len(shorten_prompt(chat)) == 80
    problems = comparison.violations(LMBudget())
    assert problems[0] == "perplexity rose 10.00% (10 fp32 -> 11), budget 8% for int4"
    assert "greedy agreement with fp32 is 33.33% (1/3 prompts), budget >= 90%" in problems[1]
    assert "'your order' first differs at new token 1: fp32 '<5>' vs engine '<99>'" in problems[1]
    assert comparison.figures()["perplexity_increase_pct"] == 10.0
    assert not compare_lm("int4", 10.0, 10.5, prompts, [[1]] * 3, [[1]] * 3).violations(LMBudget())


def test_comparison_without_prompts_or_texts_judges_what_was_measured() -> None:
    only_ppl = compare_lm("fp32", 10.0, 10.2, [], [], [])
    assert only_ppl.agreement is None
    assert only_ppl.violations(LMBudget()) == ["perplexity rose 2.00% (10 fp32 -> 10.2), budget 1% for fp32"]
    only_prompts = compare_lm("nf4", None, None, ["p"], [[1, 0]], [[1]])
    assert only_prompts.perplexity_increase_pct is None and only_prompts.engine_token == "(ended)"


def test_lm_presets_list_the_model_builder_graph_first_and_torch_fallbacks() -> None:
    assert LM_PRESET_NAMES == ("lm-int4", "lm-int8", "lm-nf4", "lm-fp32")
    assert [c.name for c in lm_preset_candidates("lm-int4")] == [
        "onnxruntime int4 g32 gguf", "onnxruntime int4 g32", "onnxruntime int4 g32 k_quant_mixed",
        "openvino-genai int4 g32", "torch nf4", "onnxruntime int8", "openvino-genai int8", "onnxruntime fp32",
        "openvino-genai fp32"]
    assert [c.name for c in lm_preset_candidates("lm-fp32")] == ["onnxruntime fp32", "openvino-genai fp32",
                                                                 "torch fp32"]
    with pytest.raises(ConfigError, match="unknown LM preset 'int8'"):
        lm_preset_candidates("int8")


def test_a_given_completion_is_tokenized_as_the_model_reads_it_after_the_prompt() -> None:
    assert completion_ids(_SplitTokenizer(), "a bb", " ccc dddd") == [3, 4]
    # "a b" + "b" reads as "a bb": the prompt's ids are no prefix, so the completion is tokenized alone
    assert completion_ids(_SplitTokenizer(), "a b", "b") == [1]
