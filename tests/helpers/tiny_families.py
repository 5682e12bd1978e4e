"""Tiny checkpoints of every encoder family from a config, each with its own small WordPiece tokenizer.

The vocabulary is built from the test texts (about 100 tokens), so a timing or calibration input drawn from a
BERT-sized vocabulary would index out of the embedding table: exactly the bug a small vocabulary catches.
Each model is briefly trained on the texts so its predictions differ per text, then saved with its tokenizer
as a normal Hugging Face checkpoint; eval data carries the model's own predictions (fp32 accuracy 100 %).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from tests.helpers.tiny_checkpoint import EVAL_TEXTS, TINY_LABELS, write_eval_data

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Shapes kept tiny but not BERT-like: 3 heads of 16 dims where the family allows a free head size.
FAMILY_CONFIGS: dict[str, dict[str, Any]] = {
    "bert": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=80),
    "roberta": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=80),
    "xlm-roberta": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=80),
    "electra": dict(hidden_size=48, embedding_size=32, num_hidden_layers=2, num_attention_heads=3,
                    intermediate_size=80),
    "distilbert": dict(dim=48, n_layers=2, n_heads=3, hidden_dim=80),
    "albert": dict(hidden_size=48, embedding_size=16, num_hidden_layers=2, num_attention_heads=3,
                   intermediate_size=80),
    "deberta-v2": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=80,
                       relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=32,
                       max_relative_positions=-1, type_vocab_size=0, position_biased_input=False,
                       norm_rel_ebd="layer_norm", share_att_key=True),
    "mpnet": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=80),
    "modernbert": dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=80,
                       global_attn_every_n_layers=2, local_attention=16),
}
NEW_FAMILIES = ("distilbert", "albert", "deberta-v2", "mpnet", "modernbert")
BERT_LIKE = ("roberta", "xlm-roberta", "electra")  # the families supported before, with these odd shapes too
# bitsandbytes' CPU kernel needs Linear in_features % 64 and out_features % 32: a wider variant for nf4.
WIDE = {"hidden_size": 64, "dim": 64, "intermediate_size": 128, "hidden_dim": 128, "num_attention_heads": 4,
        "n_heads": 4}


def word_vocabulary(texts: tuple[str, ...] = EVAL_TEXTS) -> list[str]:
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    return [*SPECIALS, *words]


def make_tokenizer(input_names: list[str], vocab: list[str] | None = None) -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocab or word_vocabulary()
    ids = {w: i for i, w in enumerate(vocab)}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_input_names=input_names)


def _shape(model_type: str, wide: bool) -> dict[str, Any]:
    """The family's tiny shape; `wide` widens it to what bitsandbytes' CPU kernel takes (nf4 builds)."""
    return {k: WIDE.get(k, v) if wide else v for k, v in FAMILY_CONFIGS[model_type].items()}


def make_family_checkpoint(path: Path, model_type: str, *, seed: int = 0, steps: int = 40, wide: bool = False
                           ) -> Path:
    """A trained tiny `*ForSequenceClassification` of `model_type` with a ~100-token tokenizer, saved at path."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    vocab = word_vocabulary()
    special = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, "cls_token_id": 2, "sep_token_id": 3}
    extra = special if model_type == "modernbert" else {"pad_token_id": 0}
    config = AutoConfig.for_model(
        model_type, vocab_size=len(vocab), max_position_embeddings=130, num_labels=len(TINY_LABELS),
        id2label=dict(enumerate(TINY_LABELS)), label2id={label: i for i, label in enumerate(TINY_LABELS)},
        **extra, **_shape(model_type, wide))
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    # The tokenizer says what a real checkpoint's tokenizer would: BERT-style ids, mask and token types.
    tokenizer = make_tokenizer(["input_ids", "token_type_ids", "attention_mask"])
    encoded = tokenizer(list(EVAL_TEXTS), padding=True, return_tensors="pt")
    accepted = set(inspect.signature(model.forward).parameters)
    inputs = {k: v for k, v in encoded.items() if k in accepted}
    targets = torch.tensor([i % len(TINY_LABELS) for i in range(len(EVAL_TEXTS))])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(**inputs, labels=targets).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def make_family_build_inputs(root: Path, model_type: str, wide: bool = False) -> tuple[Path, Path]:
    """(checkpoint, eval data) for one family under root."""
    name = f"{model_type}-wide" if wide else model_type
    checkpoint = make_family_checkpoint(root / f"tiny-{name}", model_type, wide=wide)
    return checkpoint, write_eval_data(root / f"eval-{name}.jsonl", checkpoint)


PAIRS = (
    ("where is my order #A1234?", "has my parcel shipped yet"),
    ("I want my money back for the broken headphones", "please refund the 49.99 you charged me twice"),
    ("can't log in, password reset email never arrives", "two factor code is not being sent to my phone"),
    ("my account got locked after too many attempts", "how do I change the email on my account"),
    ("tracking number says label created for 5 days now", "when will the blue hoodie be delivered?"),
    ("the coffee grinder stopped working, I'd like a refund",
     "return label please, the shoes don't fit and I want a refund"),
)


def make_embedding_checkpoint(path: Path, model_type: str = "bert", *, normalize: bool = True,
                              pooling: str = "mean", wide: bool = False) -> Path:
    """A tiny bare encoder saved the sentence-transformers way (modules.json, 1_Pooling/config.json)."""
    import json

    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(model_type, vocab_size=len(word_vocabulary()), max_position_embeddings=130,
                                  pad_token_id=0, **_shape(model_type, wide))
    torch.manual_seed(1)
    AutoModel.from_config(config).eval().save_pretrained(str(path))
    make_tokenizer(["input_ids", "token_type_ids", "attention_mask"]).save_pretrained(str(path))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": config.hidden_size, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean"}))
    return path


def write_pairs(path: Path) -> Path:
    import json

    path.write_text("".join(json.dumps({"text": q, "positive": p}) + "\n" for q, p in PAIRS)
                    + "".join(json.dumps({"text": t}) + "\n" for t in EVAL_TEXTS))
    return path


def make_ner_checkpoint(path: Path, model_type: str = "bert", *, rows: int = 200, epochs: int = 12,
                        wide: bool = False) -> Path:
    """A tiny `*ForTokenClassification` trained on the NER demo's annotated messages, with a word vocabulary
    of those messages (a few hundred tokens); the demo's eval file is left unseen."""
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification

    from engineforge.demo.ner_data import NER_EVAL_FILE, NER_LABELS, NER_TRAIN_FILE
    from engineforge.demo.ner_finetune import NerFinetuneSettings, load_rows, train_token_classifier

    train = load_rows(NER_TRAIN_FILE)[:rows]
    texts = tuple(r["text"] for r in train + load_rows(NER_EVAL_FILE))
    tokenizer = make_tokenizer(["input_ids", "token_type_ids", "attention_mask"], word_vocabulary(texts))
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), max_position_embeddings=130, pad_token_id=0,
                                  num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS)),
                                  label2id={label: i for i, label in enumerate(NER_LABELS)},
                                  **_shape(model_type, wide))
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_config(config)
    train_token_classifier(model, tokenizer, train, NerFinetuneSettings(epochs=epochs, learning_rate=3e-3))
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
