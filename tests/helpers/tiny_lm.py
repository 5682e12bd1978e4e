"""Tiny causal LMs made from a config, each with its own small byte-level BPE vocabulary, briefly trained on a few
support-reply sentences so greedy continuations differ per prompt (a random LM repeats its last token)."""

from __future__ import annotations

import json
from pathlib import Path

LM_TEXTS = (
    "refunds are processed within five business days of the return arriving",
    "your order has shipped and the tracking number is in your email",
    "to reset your password open the account page and choose forgot password",
    "we are sorry the item arrived damaged, a replacement is on its way",
    "you can cancel your subscription at any time from the billing settings",
    "our support team answers every message within one working day",
    "the warranty covers manufacturing defects for two years after purchase",
    "delivery to most countries takes between three and seven days",
)
LM_PROMPTS = ("refunds are", "your order has", "to reset your", "the warranty covers", "delivery to most",
              "our support team", "you can cancel", "we are sorry")
LAYOUTS = ("llama", "qwen2", "gpt2", "mistral", "phi3")


def _tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(LM_TEXTS) * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", bos_token="<|end|>",
                                   pad_token="<|end|>")


def _model(layout: str, vocab: int, eos: int):
    import transformers as tf

    common = dict(vocab_size=vocab, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    decoder = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256, **common)
    if layout == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**decoder))
    if layout == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**decoder, tie_word_embeddings=True))
    if layout == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**decoder, sliding_window=None))
    if layout == "phi3":
        return tf.Phi3ForCausalLM(tf.Phi3Config(**decoder))
    if layout == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common))
    raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")


_MADE: dict[tuple[str, int, int, int], Path] = {}  # one training per model in a pytest run; later calls copy it


def make_tiny_lm(path: Path, layout: str = "llama", vocab_size: int = 320, steps: int = 120, seed: int = 0) -> Path:
    """Save a briefly trained tiny `*ForCausalLM` with its tokenizer at `path`; returns `path`."""
    import shutil

    import torch

    key = (layout, vocab_size, steps, seed)
    if key in _MADE and (_MADE[key] / "config.json").is_file():
        shutil.copytree(_MADE[key], path)
        return path

    torch.manual_seed(seed)
    tokenizer = _tokenizer(vocab_size)
    eos = tokenizer.eos_token_id
    model = _model(layout, len(tokenizer), eos)
    batch = tokenizer([t + "<|end|>" for t in LM_TEXTS], return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    _MADE[key] = Path(path)
    return path


def write_lm_eval_data(path: Path) -> Path:
    """Eval JSONL: texts for perplexity and prompts for greedy agreement (completions left out: the fp32 model's
    own greedy output is the reference)."""
    rows = [{"text": t} for t in LM_TEXTS] + [{"prompt": p} for p in LM_PROMPTS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
