"""4-bit weight-only quantization: ONNX Runtime MatMulNBits on the ONNX graph, or bitsandbytes on the torch model.

- `int4_weight_only` (ONNX stage): block-wise int4 weights in `com.microsoft.MatMulNBits`. Only MatMul
  nodes with a constant weight are rewritten: after graph_optimize the fused `Attention` nodes keep their
  packed QKV weight in fp32, as do Gemm nodes (pooler, classifier) and embeddings. Weight-only int4 is
  built for memory-bound LLM decoding; on a small encoder at batch >= 1 x 128 it is compute bound, and
  on x86 it has measured slower than dynamic int8 (FIELD-NOTES).
- `bnb_4bit` (torch stage): bitsandbytes NF4/FP4 Linear4bit layers. There is no ONNX path for them, so
  the engine is served by PyTorch itself (runtime "torch-bnb") from a `save_pretrained` directory.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

from engineforge.errors import ConfigError

from .config import STAGE_ONNX_QUANTIZE, STAGE_TORCH_QUANTIZE, StepConfig, _require, register_config_type
from .inference import file_mb
from .pipeline import BuildContext, register_step

# bitsandbytes' CPU kernel (AVX512-BF16 machines) repacks weights in blocks of 32 output rows and reshapes
# the per-64-input absmax; other shapes fail in eval mode ("N must be divisible by block_n").
BNB_OUT_MULTIPLE = 32
BNB_IN_MULTIPLE = 64
# The classification head stays full precision: it is tiny and its error lands directly on the logits.
ALWAYS_KEEP = ("classifier",)


@register_config_type
@dataclass(frozen=True)
class Int4WeightOnlyConfig(StepConfig):
    """ONNX Runtime block-wise int4 weights (MatMulNBits); activations stay fp32."""

    step_type: ClassVar[str] = "int4_weight_only"
    stage: ClassVar[int] = STAGE_ONNX_QUANTIZE

    # Weights along K share one scale (and zero point) per block; smaller blocks = more accurate, bigger file.
    block_size: int = 32
    # Symmetric drops the zero points (slightly smaller, slightly less accurate at 4 bits).
    symmetric: bool = False
    # MatMulNBits compute type: None/0 = ORT default, 1 = fp32, 2 = fp16, 3 = bf16, 4 = int8 activations.
    accuracy_level: int | None = None
    # Node names left in fp32 (e.g. a sensitive last layer).
    exclude_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require(
            self.block_size >= 16 and self.block_size & (self.block_size - 1) == 0,
            f"int4_weight_only.block_size={self.block_size}: use a power of two >= 16 (32 default, 128 smaller)",
        )
        _require(
            self.accuracy_level is None or self.accuracy_level in (0, 1, 2, 3, 4),
            f"int4_weight_only.accuracy_level={self.accuracy_level}: use 0-4 (4 = int8 compute) or omit it",
        )
        object.__setattr__(self, "exclude_nodes", tuple(self.exclude_nodes))


@register_config_type
@dataclass(frozen=True)
class Bnb4BitConfig(StepConfig):
    """bitsandbytes 4-bit Linear layers, served by PyTorch (runtime "torch-bnb")."""

    step_type: ClassVar[str] = "bnb_4bit"
    stage: ClassVar[int] = STAGE_TORCH_QUANTIZE
    onnx_incompatible: ClassVar[bool] = True  # bitsandbytes ops have no ONNX export

    quant_type: str = "nf4"
    # Quantize the per-block scales too (saves ~0.4 bit per weight).
    double_quant: bool = True
    compute_dtype: str = "float32"
    # Module names (or prefixes) kept full precision besides the classifier.
    keep_full_precision: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require(self.quant_type in ("nf4", "fp4"),
                 f"bnb_4bit.quant_type='{self.quant_type}': use 'nf4' (more accurate for weights) or 'fp4'")
        _require(self.compute_dtype in ("float32", "bfloat16"),
                 f"bnb_4bit.compute_dtype='{self.compute_dtype}': use 'float32' (default) or 'bfloat16'; "
                 "float16 is slow on CPUs")
        object.__setattr__(self, "keep_full_precision", tuple(self.keep_full_precision))


def _layer_role(node_name: str) -> str:
    """`/model/bert/encoder/layer.3/intermediate/dense/MatMul_Q4` -> `layer.*/intermediate/dense`."""
    role = re.sub(r"layer\.\d+", "layer.*", node_name)
    role = re.sub(r"/MatMul(_Q4)?$", "", role)
    return role[role.index("layer.*"):] if "layer.*" in role else role.strip("/")


def _weight_summary(model: Any) -> tuple[float, dict[str, int]]:
    """(fraction of dense weights now int4, {op type: nodes whose constant weight is still fp32})."""
    import onnx

    def attr(node: Any, name: str) -> int:
        return next(int(a.i) for a in node.attribute if a.name == name)

    inits = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2}
    int4 = sum(attr(n, "K") * attr(n, "N") for n in model.graph.node if n.op_type == "MatMulNBits")
    # Attention holds the packed QKV weight as input 1; MatMul/Gemm their weight as input 1 too.
    fp32_nodes = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Attention")
                  and len(n.input) > 1 and n.input[1] in inits]
    fp32 = sum(int(inits[w].dims[0]) * int(inits[w].dims[1]) for w in {n.input[1] for n in fp32_nodes})
    return round(int4 / max(1, int4 + fp32), 3), dict(Counter(n.op_type for n in fp32_nodes))


@register_step(Int4WeightOnlyConfig)
def quantize_int4_weight_only(ctx: BuildContext, config: Int4WeightOnlyConfig) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    assert ctx.onnx_path is not None, "int4_weight_only runs after export"
    path = ctx.work_dir / "model.int4.onnx"
    before = file_mb(ctx.onnx_path)
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(ctx.onnx_path)), bits=4, block_size=config.block_size, is_symmetric=config.symmetric,
        accuracy_level=config.accuracy_level, nodes_to_exclude=list(config.exclude_nodes),
        op_types_to_quantize=("MatMul",),
    )
    # The quantizer logs every node at INFO through its own handler; keep the build output readable.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer.process()
    quantizer.model.save_model_to_file(str(path), use_external_data_format=False)
    model = onnx.load(str(path))
    quantized = [n.name for n in model.graph.node if n.op_type == "MatMulNBits"]
    if not quantized:
        raise ConfigError("int4_weight_only found no MatMul with a constant weight to quantize: "
                          "is the graph already quantized (drop the other quantization step)?")
    int4_fraction, fp32_ops = _weight_summary(model)
    ctx.onnx_path = path
    ctx.precision = "int4-weight-only"
    return {
        "file": path.name, "size_mb": file_mb(path), "size_before_mb": before,
        "quantized_nodes": len(quantized),
        "quantized_roles": dict(Counter(_layer_role(n) for n in quantized)),
        # Weights that stay fp32: fused Attention (packed QKV) and Gemm (pooler, classifier) are not MatMuls.
        "fp32_weight_ops": fp32_ops, "int4_weight_fraction": int4_fraction,
        "block_size": config.block_size, "symmetric": config.symmetric, "accuracy_level": config.accuracy_level,
    }


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
def quantize_bnb_4bit(ctx: BuildContext, config: Bnb4BitConfig) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    if getattr(ctx.model.config, "pruned_layout", None):
        raise ConfigError("bnb_4bit cannot follow prune: the served model is rebuilt with from_pretrained, which "
                          "cannot reproduce a per-layer pruned layout; drop one of the two steps")
    quantize, skipped = plan_bnb_modules(ctx.model, config.keep_full_precision)
    if not quantize:
        raise ConfigError(f"bnb_4bit found no Linear layer it can quantize (skipped: {skipped}); "
                          f"bitsandbytes on CPU needs out_features % {BNB_OUT_MULTIPLE} == 0")
    fp32_dir, out_dir = ctx.work_dir / "model.fp32-hf", ctx.work_dir / f"model.bnb-{config.quant_type}"
    # Quantize through from_pretrained so config.json records the quantization and serving can reload it.
    ctx.model.save_pretrained(str(fp32_dir))
    quant_config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=config.quant_type, bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, config.compute_dtype),
        # transformers matches these as regexes anchored at module boundaries: escape the dots.
        llm_int8_skip_modules=[re.escape(name) for name in skipped],
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        str(fp32_dir), quantization_config=quant_config, device_map="cpu", local_files_only=True)
    # Save before any forward pass (the first one repacks weights for the CPU kernel), then validate the
    # reloaded copy so the build checks exactly the files it ships.
    model.save_pretrained(str(out_dir))
    shutil.rmtree(fp32_dir)
    ctx.model = AutoModelForSequenceClassification.from_pretrained(
        str(out_dir), device_map="cpu", local_files_only=True).eval()
    converted = [n for n, m in ctx.model.named_modules() if type(m).__name__ == "Linear4bit"]
    ctx.model_dir, ctx.runtime, ctx.precision = out_dir, "torch-bnb", config.quant_type
    return {
        "file": out_dir.name, "size_mb": file_mb(out_dir), "quant_type": config.quant_type,
        "double_quant": config.double_quant, "compute_dtype": config.compute_dtype,
        "quantized_linear": len(converted), "skipped_modules": skipped,
    }
