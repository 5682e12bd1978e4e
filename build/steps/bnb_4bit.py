"""`bnb_4bit`: bitsandbytes NF4/FP4 Linear4bit layers in the torch model.

There is no ONNX path for bitsandbytes layers, so the engine is served by PyTorch itself (runtime
"torch-bnb") from a `save_pretrained` directory. The model is reloaded with its task's own class (a token
classifier as a token classifier, an embedder as its bare encoder, whose pooling goes into `pooling.json`
beside the weights), the class the torch-bnb loader picks from the saved `architectures`.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from typing import Any, ClassVar

from engineforge.engines.pooling import save_pooling, sentence_embedder
from engineforge.engines.torch_engine import TORCH_BNB, auto_class
from engineforge.errors import ConfigError
from engineforge.file_modes import follow_umask

from ..config import ENGINE, STAGE_TORCH_QUANTIZE, STANDARD_LAYOUT, TORCH_MODEL, StepConfig, require
from ..context import BuildContext
from ..files import file_mb
from ..step_output import StepOutput
from ..step_registry import register_step

# bitsandbytes' CPU kernel (AVX512-BF16 machines) repacks weights in blocks of 32 output rows and reshapes
# the per-64-input absmax; other shapes fail in eval mode ("N must be divisible by block_n").
BNB_OUT_MULTIPLE = 32
BNB_IN_MULTIPLE = 64
# The classification head stays full precision: it is tiny and its error lands directly on the logits.
ALWAYS_KEEP = ("classifier",)


@dataclass(frozen=True)
class Bnb4BitConfig(StepConfig):
    """bitsandbytes 4-bit Linear layers, served by PyTorch (runtime "torch-bnb")."""

    step_type: ClassVar[str] = "bnb_4bit"
    stage: ClassVar[int] = STAGE_TORCH_QUANTIZE
    requires = frozenset({TORCH_MODEL, STANDARD_LAYOUT})
    provides = frozenset({ENGINE})
    removes = frozenset({TORCH_MODEL})
    removes_reason = ("replaced the model with bitsandbytes 4-bit layers, which no ONNX exporter can export "
                      "(the bnb engine is served by PyTorch itself; to quantize an ONNX graph instead, use "
                      "int4_weight_only or dynamic_int8)")

    quant_type: str = "nf4"
    # Quantize the per-block scales too (saves ~0.4 bit per weight).
    double_quant: bool = True
    compute_dtype: str = "float32"
    # Module names (or prefixes) kept full precision besides the classifier.
    keep_full_precision: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require(self.quant_type in ("nf4", "fp4"),
                 f"bnb_4bit.quant_type='{self.quant_type}': use 'nf4' (more accurate for weights) or 'fp4'")
        require(self.compute_dtype in ("float32", "bfloat16"),
                 f"bnb_4bit.compute_dtype='{self.compute_dtype}': use 'float32' (default) or 'bfloat16'; "
                 "float16 is slow on CPUs")
        object.__setattr__(self, "keep_full_precision", tuple(self.keep_full_precision))


def plan_bnb_modules(model: Any, keep: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    """(Linear modules to quantize, {skipped module: reason}) for bitsandbytes 4-bit on CPU."""
    import torch

    quantize: list[str] = []
    skipped: dict[str, str] = {}
    kept = (*ALWAYS_KEEP, *keep)
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear:
            continue
        if any(name == k or name.startswith(k + ".") or name.endswith("." + k) for k in kept):
            skipped[name] = "kept full precision"
        elif module.out_features % BNB_OUT_MULTIPLE:
            skipped[name] = f"out_features {module.out_features} not a multiple of {BNB_OUT_MULTIPLE}"
        elif module.in_features % BNB_IN_MULTIPLE:
            skipped[name] = f"in_features {module.in_features} not a multiple of {BNB_IN_MULTIPLE}"
        else:
            quantize.append(name)
    return quantize, skipped


@register_step(Bnb4BitConfig)
def quantize_bnb_4bit(ctx: BuildContext, config: Bnb4BitConfig) -> StepOutput:
    import torch
    from transformers import BitsAndBytesConfig

    # An embedder is its encoder wrapped in pooling (tasks.embedding_model): quantize and save the encoder, whose
    # module names are the ones from_pretrained matches the skip list against.
    hf_model = ctx.model.wrapped if ctx.is_embedding else ctx.model
    quantize, skipped = plan_bnb_modules(hf_model, config.keep_full_precision)
    if not quantize:
        raise ConfigError(f"bnb_4bit found no Linear layer it can quantize (skipped: {skipped}); "
                          f"bitsandbytes on CPU needs out_features % {BNB_OUT_MULTIPLE} == 0")
    fp32_dir, out_dir = ctx.work_dir / "model.fp32-hf", ctx.work_dir / f"model.bnb-{config.quant_type}"
    # Quantize through from_pretrained so config.json records the quantization and serving can reload it.
    hf_model.save_pretrained(str(fp32_dir))
    quant_config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=config.quant_type, bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, config.compute_dtype),
        # transformers matches these as regexes anchored at module boundaries: escape the dots.
        llm_int8_skip_modules=[re.escape(name) for name in skipped],
    )
    # The task's own class: AutoModelForSequenceClassification would turn a token classifier into a sequence
    # classifier with a freshly initialised pooler (and an embedder's encoder into a classifier).
    model = auto_class(type(hf_model).__name__).from_pretrained(
        str(fp32_dir), quantization_config=quant_config, device_map="cpu", local_files_only=True)
    # Save before any forward pass (the first one repacks weights for the CPU kernel). Validation then opens
    # the saved directory through the engine layer, so the build checks exactly the files it ships.
    model.save_pretrained(str(out_dir))
    follow_umask(out_dir)  # safetensors writes model.safetensors 0600; the bundle ships this directory
    shutil.rmtree(fp32_dir)
    converted = [n for n, m in model.named_modules() if type(m).__name__ == "Linear4bit"]
    if ctx.is_embedding:
        # The ONNX path bakes pooling into the graph; here the directory carries it for the loader.
        save_pooling(out_dir, ctx.checkpoint.pooling)
        model = sentence_embedder(model, ctx.checkpoint.pooling)
    return StepOutput(model=model, engine_dir=out_dir, runtime=TORCH_BNB, precision=config.quant_type, details={
        "file": out_dir.name, "size_mb": file_mb(out_dir), "quant_type": config.quant_type,
        "double_quant": config.double_quant, "compute_dtype": config.compute_dtype,
        "quantized_linear": len(converted), "skipped_modules": skipped,
    })
