"""LM build presets: the candidates a preset tries, in order, the first being the one wanted most. The build keeps
the fastest candidate within budget, so a later one is a fallback (another runtime, or a milder precision) when an
earlier one cannot be built here or misses the budget."""

from __future__ import annotations

from engineforge.errors import ConfigError

from .builders import LMCandidate
from .checkpoint import ORT, TORCH
from .checkpoint import OVGENAI as OV

# The model builder's graph served by ONNX Runtime with engineforge's continuous batching (lm/ort_decoder_runtime.py):
# 8 concurrent streams gave 4.6x one stream's tokens/s on SmolLM2-135M, where og.Engine's static batching gave 2.3x.
# OV: a stateful OpenVINO IR, weights compressed by NNCF, served by OpenVINO GenAI's continuous batching. Each
# precision is tried on both runtimes and the faster one within budget kept (the generation demo, SmolLM2-135M
# fine-tuned, 2 threads, OV vs ORT: fp32 37.6 vs 47.1 tok/s; int8 55.4 vs 112.8 tok/s with 45 % vs 25 % greedy
# agreement).
_PRESETS: dict[str, tuple[LMCandidate, ...]] = {
    # Default: a .gguf checkpoint's own 4-bit blocks kept as they are (refused for other checkpoints); block-wise int4
    # weights (group 32) from ONNX Runtime GenAI's model builder, round-to-nearest, then
    # k-quant with the lm_head and sensitive layers in int8; NNCF int4 on OpenVINO; bitsandbytes NF4 in torch; then
    # int8 weights and fp32 on both runtimes, so a model too small to keep its answers in 4 bits (SmolLM2-135M: +29 %
    # perplexity, 15 % greedy agreement) still gets the fastest engine that holds the budget, with the 4-bit figures
    # in the report.
    "lm-int4": (LMCandidate(ORT, "int4", 32, "gguf"), LMCandidate(ORT, "int4", 32),
                LMCandidate(ORT, "int4", 32, "k_quant_mixed"), LMCandidate(OV, "int4", 32),
                LMCandidate(TORCH, "nf4"), LMCandidate(ORT, "int8"), LMCandidate(OV, "int8"),
                LMCandidate(ORT, "fp32"), LMCandidate(OV, "fp32")),
    "lm-int8": (LMCandidate(ORT, "int8"), LMCandidate(OV, "int8"), LMCandidate(TORCH, "fp32")),
    "lm-nf4": (LMCandidate(TORCH, "nf4"),),
    "lm-fp32": (LMCandidate(ORT, "fp32"), LMCandidate(OV, "fp32"), LMCandidate(TORCH, "fp32")),
}
LM_PRESET_NAMES = tuple(_PRESETS)
DEFAULT_LM_PRESET = "lm-int4"


def is_lm_preset(name: str | None) -> bool:
    return bool(name) and str(name).startswith("lm-")


def lm_preset_candidates(name: str) -> tuple[LMCandidate, ...]:
    if name not in _PRESETS:
        raise ConfigError(f"unknown LM preset {name!r}: a decoder LM is built with one of {', '.join(LM_PRESET_NAMES)} "
                          f"(default {DEFAULT_LM_PRESET})")
    return _PRESETS[name]
