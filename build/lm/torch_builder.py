"""Builds `torch` LM engines: the checkpoint saved as is (fp32), or with bitsandbytes NF4 4-bit Linear weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import file_mb
from .builders import LMCandidate, register_lm_builder


def _check(family: str, candidate: LMCandidate) -> str:
    if candidate.precision not in ("fp32", "nf4"):
        return f"the torch runtime builds fp32 and nf4, not {candidate.precision}"
    return ""


@register_lm_builder("torch", _check)
def build_torch(hf_dir: Path, candidate: LMCandidate, model_dir: Path, threads: int | None) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if candidate.precision == "nf4":
        from transformers import BitsAndBytesConfig

        # lm_head stays fp32: its out_features (the vocabulary) is rarely a multiple of bitsandbytes' CPU block.
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           llm_int8_skip_modules=["lm_head"])
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), local_files_only=True, device_map="cpu", **kwargs)
    model.save_pretrained(str(model_dir))
    size = sum(file_mb(p) for p in Path(model_dir).glob("*.safetensors"))
    return {"size_mb": round(size, 2)}
