"""The dynamic-int8 candidate of `select_runtime`: the plain export quantized by ONNX Runtime's dynamic int8,
with the fewest transformer layers kept fp32 that bring it within the accuracy budget.

Dynamic int8 scales activations per call, so its error is larger than static Q/DQ's on some layers; a pruned and
distilled student starts with part of the budget spent (the demo's: 5 of its 6 allowed flips), and one more flip
would lose the fastest graph on an AVX2 CPU. Rather than dropping the candidate, it gets the fallback static int8
already has (`static_int8/int8_fallback.py`): each layer quantized alone is ranked by its error, then layers go
back to fp32 in that order until the budget holds, and any that the budget tolerates are quantized again. Timing
then decides whether what is left is still the fastest runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.engines import engine_logits, load_engine

from ..context import BuildContext
from .static_int8.calibration import quiet_ort
from .static_int8.int8_fallback import Sensitivity, group_nodes, rank, search_fallback

# Layers kept fp32 at most, as a share of the quantizable MatMuls: past that the graph is mostly fp32 and slower
# than the candidates it competes with.
MAX_FP32_SHARE = 0.5


def quantizable_matmuls(path: Path) -> list[str]:
    """MatMul nodes with a constant weight (what dynamic quantization turns into MatMulInteger), in graph order."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    constants = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and any(i in constants for i in n.input)]


def quantize(source: Path, out: Path, exclude: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> Path:
    """ONNX Runtime dynamic int8 with per-channel QInt8 weights (the int8 preset's settings)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_ort():
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=list(exclude),
                         nodes_to_quantize=list(only), extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def dynamic_candidate(ctx: BuildContext, texts: list[str], reference: Any,
                      examples: list[Any]) -> tuple[Path, dict[str, Any]]:
    """(the graph to try, what the fallback did). Without a fitting fallback, the all-quantized graph is returned
    and `_try_runtime` reports it outside the budget as before."""
    source = ctx.plain_onnx_path
    path = quantize(source, ctx.work_dir / "model.int8-dynamic.onnx")
    budget, threads, max_len = ctx.budget, ctx.serving_threads, ctx.config.max_sequence_length

    def evaluate(graph: Path) -> Any:
        engine = load_engine(graph, "onnxruntime", threads)
        return ctx.compare(reference, engine_logits(engine, ctx.tokenizer, texts, max_len), examples, texts)

    baseline = evaluate(path)
    if budget.holds(baseline):
        return path, {"fp32_layers": [], "fallback": "not needed"}
    progress.info(f"  dynamic int8, all quantized: {baseline.summary()}; ranking layers for an fp32 fallback")
    nodes = quantizable_matmuls(source)
    trial = ctx.work_dir / "model.int8-dynamic.trial.onnx"
    groups = group_nodes(nodes, "layer")
    ranking = rank([Sensitivity(group, members, evaluate(quantize(source, trial, only=members)))
                    for group, members in groups.items()])
    decision = search_fallback(ranking, lambda excluded: evaluate(quantize(source, trial, exclude=excluded)),
                               budget, int(len(nodes) * MAX_FP32_SHARE), baseline, refine_nodes=False)
    chosen = decision.steps[decision.chosen]
    record = {"fp32_layers": list(chosen.fp32_groups), "fallback": decision.stop_reason,
              "fallback_steps": [step.to_dict() for step in decision.steps]}
    trial.unlink(missing_ok=True)
    if not decision.budget_met:
        return path, record
    quantize(source, path, exclude=chosen.fp32_nodes)
    progress.info(f"  dynamic int8 with {', '.join(chosen.fp32_groups)} in fp32: {chosen.metrics.summary()}")
    return path, record
