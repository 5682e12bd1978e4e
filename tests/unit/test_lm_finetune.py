"""The generation demo's brief fine-tune, on a tiny LLaMA made from a config with a simple chat template: the loss
counts the answers only, the eval perplexity is measured before and after, and a second call reuses the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engineforge.demo import lm_finetune
from engineforge.demo.lm_finetune import LMFinetuneSettings, _batch, prepare_finetuned_lm, training_examples
from tests.helpers.tiny_lm import LM_TEXTS, make_tiny_lm

TEMPLATE = ("{% for m in messages %}<|end|>{{ m['role'] }}: {{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|end|>assistant: {% endif %}")


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    path = make_tiny_lm(tmp_path_factory.mktemp("ft") / "tiny-llama", "llama", steps=20)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(str(path))
    return path


def test_only_the_answer_and_its_end_of_turn_are_learned(chat_lm: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(chat_lm))
    rows = [{"prompt": "refunds are", "completion": "processed within five business days"}]
    [(ids, answer_from)] = training_examples(tokenizer, rows, max_length=128)
    assert tokenizer.decode(ids[:answer_from]).endswith("assistant: ")
    assert tokenizer.decode(ids[answer_from:]) == "processed within five business days<|end|>"
    _, labels, mask = _batch([(ids, answer_from), (ids[:answer_from + 1], answer_from)], pad=0)
    assert (labels[0, :answer_from] == -100).all() and (labels[0, answer_from:] >= 0).all()
    assert labels[1, answer_from + 1:].eq(-100).all() and mask[1].sum() == answer_from + 1  # padding not learned


def test_fine_tune_lowers_the_loss_and_is_cached(chat_lm: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": t.split()[0], "completion": " ".join(t.split()[1:])}) + "\n"
                             for t in LM_TEXTS))
    monkeypatch.setattr(lm_finetune, "LM_TRAIN_FILE", train)
    settings = LMFinetuneSettings(epochs=4, batch_size=4, learning_rate=3e-3, threads=1)
    out = tmp_path / "out"
    report = prepare_finetuned_lm(chat_lm, out, list(LM_TEXTS[:3]), settings)
    assert report["steps"] == 4 * 2 and report["examples"] == len(LM_TEXTS)
    assert report["last_loss"] < report["first_loss"]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    saved = (out / "model.safetensors").stat().st_mtime_ns
    again = prepare_finetuned_lm(chat_lm, out, list(LM_TEXTS[:3]), settings)
    assert again == report and (out / "model.safetensors").stat().st_mtime_ns == saved  # not trained again
    changed = prepare_finetuned_lm(chat_lm, out, list(LM_TEXTS[:3]), LMFinetuneSettings(epochs=1, batch_size=8,
                                                                                          threads=1))
    assert changed["steps"] == 1 and changed["fingerprint"] != report["fingerprint"]


def test_a_tokenizer_without_a_chat_template_is_refused(tmp_path: Path) -> None:
    plain = make_tiny_lm(tmp_path / "plain", "llama", steps=1)
    with pytest.raises(ValueError, match="no chat template"):
        lm_finetune.finetune_lm(plain, tmp_path / "out", [], LMFinetuneSettings(threads=1))


def test_the_demo_judges_prompts_in_the_chat_format_it_serves(chat_lm: Path, tmp_path: Path) -> None:
    from engineforge.demo.generation import EVAL_FILE, chat_eval_file

    shipped = [json.loads(line) for line in EVAL_FILE.read_text().splitlines() if line.strip()]
    rows = [json.loads(line) for line in chat_eval_file(chat_lm, tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [r.get("text") for r in rows] == [r.get("text") for r in shipped]  # texts as they are
    question = next(r["prompt"] for r in shipped if "prompt" in r)
    assert next(r["prompt"] for r in rows if "prompt" in r) == f"<|end|>user: {question}<|end|><|end|>assistant: "
