"""The generation demo's optional brief fine-tune: the instruct model on shipped support answers (cached on disk).

Each `{"prompt", "completion"}` row of lm_train.jsonl is one chat turn in the model's own chat format; the loss counts
the answer's tokens only (and the end-of-turn token), so the model learns to answer, not to ask. The eval replies
(lm_eval.jsonl) are not trained on: their perplexity before and after says what the fine-tune did, and the build
then judges the engine against the fine-tuned fp32 model.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.data import read_jsonl_rows

DATA_DIR = Path(__file__).parent / "data"
LM_TRAIN_FILE = DATA_DIR / "lm_train.jsonl"
REPORT = "finetune_report.json"


@dataclass(frozen=True)
class LMFinetuneSettings:
    epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 3e-5
    max_length: int = 160
    seed: int = 7
    threads: int = 2


def prepare_finetuned_lm(base_dir: Path, out_dir: Path, eval_texts: list[str],
                         settings: LMFinetuneSettings | None = None) -> dict[str, Any]:
    """The fine-tune report; fine-tunes only when `out_dir` holds none for this base model, data and settings."""
    settings = settings or LMFinetuneSettings()
    fingerprint = _fingerprint(base_dir, settings)
    report_file = Path(out_dir) / REPORT
    if report_file.is_file():
        report = json.loads(report_file.read_text())
        if report.get("fingerprint") == fingerprint and (Path(out_dir) / "model.safetensors").is_file():
            progress.info(f"fine-tuned LM cached in {out_dir} (eval perplexity {report['eval_perplexity_before']} -> "
                          f"{report['eval_perplexity_after']})")
            return report
    report = finetune_lm(base_dir, Path(out_dir), eval_texts, settings) | {"fingerprint": fingerprint}
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _fingerprint(base_dir: Path, settings: LMFinetuneSettings) -> str:
    digest = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    digest.update(LM_TRAIN_FILE.read_bytes())
    for name in ("config.json", "model.safetensors"):
        path = Path(base_dir) / name
        digest.update(f"{name}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def training_examples(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> list[tuple[list[int], int]]:
    """(token ids, where the answer starts) per row: the chat-formatted question tokenized alone, as the served
    model tokenizes a prompt, then the answer and the template's end of turn, the tokens it should generate."""
    examples = []
    for row in rows:
        turn = [{"role": "user", "content": row["prompt"]}]
        prompt = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template([*turn, {"role": "assistant", "content": row["completion"]}],
                                              tokenize=False)
        if not whole.startswith(prompt) or len(whole) == len(prompt):
            raise ValueError(f"the chat template does not extend the prompt with the answer for {row['prompt']!r}")
        prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        answer_ids = list(tokenizer(whole[len(prompt):], add_special_tokens=False)["input_ids"])
        if len(prompt_ids) >= max_length:
            raise ValueError(f"{row['prompt'][:60]!r} fills max_length {max_length} before its answer: raise it")
        examples.append(((prompt_ids + answer_ids)[:max_length], len(prompt_ids)))
    return examples


def finetune_lm(base_dir: Path, out_dir: Path, eval_texts: list[str], settings: LMFinetuneSettings) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{base_dir}: the tokenizer has no chat template to format the training turns with")
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    rows = [row for _, row in read_jsonl_rows(LM_TRAIN_FILE, '{"prompt": "...", "completion": "..."}')]
    examples = training_examples(tokenizer, rows, settings.max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    before = _perplexity(model, tokenizer, eval_texts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    order = random.Random(settings.seed)
    steps, losses, started = 0, [], time.perf_counter()
    total = settings.epochs * math.ceil(len(examples) / settings.batch_size)
    model.train()
    for epoch in range(settings.epochs):
        batch_order = list(examples)
        order.shuffle(batch_order)
        for start in range(0, len(batch_order), settings.batch_size):
            ids, labels, mask = _batch(batch_order[start: start + settings.batch_size], pad)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            losses.append(loss.item())
            progress.info(f"  fine-tune step {steps}/{total} (epoch {epoch + 1}): loss {losses[-1]:.3f}")
    model.eval()
    after = _perplexity(model, tokenizer, eval_texts)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return {"base": str(base_dir), "train_file": LM_TRAIN_FILE.name, "examples": len(examples), "steps": steps,
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
            "eval_perplexity_before": round(before, 3), "eval_perplexity_after": round(after, 3),
            "train_seconds": round(time.perf_counter() - started, 1), "settings": asdict(settings)}


def _batch(examples: list[tuple[list[int], int]], pad: int) -> tuple[Any, Any, Any]:
    """Right-padded ids, labels (-100 on the question and the padding) and the attention mask."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (tokens, answer_from) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, answer_from: len(tokens)] = torch.tensor(tokens[answer_from:])
        mask[row, : len(tokens)] = 1
    return ids, labels, mask


def _perplexity(model: Any, tokenizer: Any, texts: list[str]) -> float:
    """The build's perplexity (build/lm/quality.py) of the model in training, so the report's figures are the ones
    the LM build states for the same checkpoint."""
    from engineforge.build.lm.quality import perplexity
    from engineforge.lm.torch_engine import TorchLMEngine

    return perplexity(TorchLMEngine(model, eos_token_ids=()), tokenizer, texts)
