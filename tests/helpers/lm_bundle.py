"""LM engine bundles for tests: a tiny trained causal LM (tiny_lm.py) built by the torch fp32 builder, with its
tokenizer and spec, as the LM build writes them."""

from __future__ import annotations

from pathlib import Path

from engineforge.build.lm.builders import LMCandidate, lm_builder
from engineforge.lm.bundle import LMEngineSpec

from .tiny_lm import make_tiny_lm


def make_lm_bundle(bundle: Path, hf_dir: Path, *, max_length: int = 256, max_batch: int = 8,
                   eos_token_ids: list[int] | None = None, runtime: str = "torch") -> Path:
    """An fp32 bundle of the tiny LM saved at `hf_dir` (torch, or another runtime with an LM builder);
    `eos_token_ids` replaces the tokenizer's EOS (an id the model never emits makes every generation run to
    max_tokens: long streams for concurrency and cancellation)."""
    bundle.mkdir(parents=True)
    lm_builder(runtime).build(hf_dir, LMCandidate(runtime, "fp32"), bundle / "model", 1)
    return write_bundle_files(bundle, hf_dir, runtime, "fp32", max_length=max_length, max_batch=max_batch,
                              eos_token_ids=eos_token_ids)


def write_bundle_files(bundle: Path, hf_dir: Path, runtime: str, precision: str, *, max_length: int = 256,
                       max_batch: int = 8, eos_token_ids: list[int] | None = None) -> Path:
    """The tokenizer and spec beside a builder's output at `bundle/model`, as the LM build writes them."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    tokenizer.save_pretrained(str(bundle / "tokenizer"))
    family = AutoConfig.from_pretrained(str(hf_dir)).model_type
    eos = eos_token_ids if eos_token_ids is not None else [tokenizer.eos_token_id]
    LMEngineSpec(runtime=runtime, precision=precision, family=family, max_length=max_length, eos_token_ids=eos,
                 max_batch=max_batch, threads=1).save(bundle)
    return bundle


def tiny_lm_dir(root: Path, layout: str = "llama") -> Path:
    return make_tiny_lm(root / f"tiny-{layout}", layout)


def bundle_for_model_dir(bundle: Path, hf_dir: Path, precision: str = "int4", runtime: str = "onnxruntime"):
    """(engine, tokenizer) of a builder's output already at `bundle/model`, opened as served."""
    from engineforge.lm.bundle import open_lm_bundle

    write_bundle_files(bundle, hf_dir, runtime, precision, max_batch=1)
    _, engine, served_tokenizer = open_lm_bundle(bundle, threads=1)
    return engine, served_tokenizer
