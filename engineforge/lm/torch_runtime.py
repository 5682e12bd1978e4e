"""Registers the `torch` LM runtime: a `save_pretrained` directory (fp32, or bitsandbytes NF4 from its
quantization_config) opened by transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .runtimes import register_lm_runtime
from .torch_engine import TorchLMEngine


@register_lm_runtime("torch")
def open_torch_lm(spec: Any, model_dir: Path, threads: int | None = None, max_batch: int = 8) -> TorchLMEngine:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, device_map="cpu")
    return TorchLMEngine(model, spec.eos_token_ids, max_batch=max_batch, threads=threads, precision=spec.precision)
