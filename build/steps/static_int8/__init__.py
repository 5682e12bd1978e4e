"""`static_int8`: calibrated Q/DQ quantization with a sensitivity-driven fp32 fallback.

Activations get fixed int8 ranges from real calibration texts (calibration.py), weights are
int8 per channel, and every quantized tensor is written as QuantizeLinear/DequantizeLinear pairs:
the portable form that OpenVINO and TensorRT turn into int8 kernels. When the engine misses the
accuracy budget of the build's validate step, the most sensitive groups of nodes stay fp32
(int8_fallback.py), and the decision is recorded in the build report.

Which runtime it is for (MiniLM-L6 demo classifier, 2 threads, 1x128, interleaved timings): OpenVINO
(f32 pinned, as served) runs this file ~2x faster than fp32. ONNX Runtime's x86 kernels have no fast
path for symmetric int8 activations and run it ~1.4x *slower* than fp32; with activation_type =
"uint8" ORT is ~1.5x faster than fp32, and its dynamic int8 (~2x, no calibration) stays the better
choice when ORT serves.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from engineforge import progress
from engineforge.engines import cpu_candidate_names, engine_logits, load_engine, runtime_info
from engineforge.engines.registry import REFERENCE_RUNTIME
from engineforge.errors import ConfigError, DataError

from ...accuracy import Budget, Comparison
from ...config import (
    CALIBRATION_DATA,
    EVAL_DATA,
    ONNX_GRAPH,
    PLAIN_ONNX,
    PORTABLE_ONNX,
    QDQ_INT8_ONNX,
    STAGE_ONNX_QUANTIZE,
    StepConfig,
    require,
)
from ...context import BuildContext
from ...embedding_quality import EmbeddingComparison
from ...files import file_mb
from ...step_output import StepOutput
from ...step_registry import register_step
from .calibration import TextCalibrationReader, calibrate, quiet_ort, require_calibration_examples
from .int8_fallback import GRANULARITIES, Sensitivity, group_nodes, match_patterns, rank, search_fallback
from .qdq_checks import check_engines, qdq_summary

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Op types worth quantizing in a BERT graph: MatMul/Gemm carry ~all the compute, Gather (embeddings) only size.
OP_TYPES = ("MatMul", "Gemm", "Gather")


@dataclass(frozen=True)
class StaticInt8Config(StepConfig):
    """ONNX Runtime static int8 (QDQ): calibrated activation ranges, per-channel int8 weights."""

    step_type: ClassVar[str] = "static_int8"
    stage: ClassVar[int] = STAGE_ONNX_QUANTIZE
    # It quantizes the plain export even after graph_optimize (see _source_graph).
    requires = frozenset({PLAIN_ONNX, CALIBRATION_DATA})
    provides = frozenset({ONNX_GRAPH, PORTABLE_ONNX, QDQ_INT8_ONNX})  # a portable graph, even after fusion

    calibration_method: str = "minmax"
    # Histogram percentile kept by the `percentile` method (clips the rarest outliers).
    percentile: float = 99.999
    # "int8" = symmetric int8 activations (zero point 0): what TensorRT's parser and OpenVINO want.
    # "uint8" = asymmetric: what ONNX Runtime's own x86 int8 kernels are fastest with.
    activation_type: str = "int8"
    per_channel: bool = True
    # Q/DQ on MatMul/Gemm outputs too (ORT's default). Off = inputs only, NNCF's and TensorRT's placement:
    # measured on the demo model in OpenVINO (1x128, interleaved), 6.33 ms vs 6.60 ms all-quantized, and one
    # rounding fewer per projection.
    quantize_outputs: bool = False
    # None = every calibration example. Histogram methods hold activations in memory: keep it modest.
    num_calibration_examples: int | None = 256
    calibration_batch_size: int = 16
    op_types: tuple[str, ...] = ("MatMul", "Gemm")
    # Keep the most accuracy-sensitive nodes fp32 until the validate step's budget holds.
    fallback: bool = True
    max_fallback_nodes: int = 16
    # Fallback unit for the sensitivity pass: "role" = one projection across all layers (e.g. every FFN
    # output MatMul), "layer" = one transformer layer, "node" = single nodes (one pass per node: slow).
    sensitivity_granularity: str = "role"
    # After the group search, try re-quantizing each single fp32 node (one eval pass per node).
    refine_nodes: bool = True
    # Node names or globs forced to stay fp32, e.g. ["*classifier*"].
    keep_fp32: tuple[str, ...] = ()
    # Runtimes in which every fallback candidate must meet the budget (the worst result counts): Q/DQ
    # numerics differ between ORT and OpenVINO, and a search that stops at the budget's edge in one can
    # miss it in the other. OpenVINO is skipped when not installed.
    eval_runtimes: tuple[str, ...] = field(default_factory=cpu_candidate_names)
    # Load the result in OpenVINO and parse it with TensorRT (each where installed), so a graph one of
    # them cannot read fails the build here rather than at deployment.
    check_engines: bool = True

    def __post_init__(self) -> None:
        require(self.calibration_method in CALIBRATION_METHODS,
                f"static_int8.calibration_method={self.calibration_method!r}: use one of {CALIBRATION_METHODS}")
        require(90 < self.percentile <= 100,
                f"static_int8.percentile={self.percentile}: give a percentile in (90, 100], e.g. 99.999")
        require(self.activation_type in ("int8", "uint8"),
                f"static_int8.activation_type={self.activation_type!r}: use 'int8' (symmetric; TensorRT/OpenVINO) "
                "or 'uint8' (ONNX Runtime CPU)")
        require(self.num_calibration_examples is None or self.num_calibration_examples >= 1,
                f"static_int8.num_calibration_examples={self.num_calibration_examples}: use >= 1 (e.g. 256) "
                "or omit it for all")
        require(self.calibration_batch_size >= 1,
                f"static_int8.calibration_batch_size={self.calibration_batch_size}: use >= 1, e.g. 16")
        for name in ("op_types", "keep_fp32", "eval_runtimes"):
            value = getattr(self, name)
            require(not isinstance(value, str) and all(isinstance(v, str) and v for v in value),
                    f"static_int8.{name}={value!r}: give a list of non-empty strings, e.g. "
                    + {"op_types": "['MatMul', 'Gemm']", "keep_fp32": "['*classifier*']",
                       "eval_runtimes": "['onnxruntime', 'openvino']"}[name])
            object.__setattr__(self, name, tuple(value))
        unknown = sorted(set(self.op_types) - set(OP_TYPES))
        require(bool(self.op_types) and not unknown,
                f"static_int8.op_types={list(self.op_types)}: choose from {list(OP_TYPES)} (default MatMul, Gemm)")
        require(self.max_fallback_nodes >= 0,
                f"static_int8.max_fallback_nodes={self.max_fallback_nodes}: use >= 0 (0 disables the search)")
        unknown = sorted(set(self.eval_runtimes) - set(cpu_candidate_names()))
        require(bool(self.eval_runtimes) and not unknown,
                f"static_int8.eval_runtimes={list(self.eval_runtimes)}: choose from {list(cpu_candidate_names())}")
        require(self.sensitivity_granularity in GRANULARITIES,
                f"static_int8.sensitivity_granularity={self.sensitivity_granularity!r}: use one of {GRANULARITIES}")

    @property
    def searches_fallback(self) -> bool:
        return self.fallback and self.max_fallback_nodes > 0

    def prerequisites(self) -> frozenset:
        # The fp32 fallback measures accuracy on the eval data (set fallback = false to build without it).
        return self.requires | ({EVAL_DATA} if self.searches_fallback else set())


def _source_graph(ctx: BuildContext) -> Path:
    """The unfused export, even when graph_optimize ran before this step.

    Measured on the MiniLM-L6 demo classifier (2 threads, 1x128, all MatMul/Gemm quantized): OpenVINO
    runs the unfused Q/DQ graph ~1.5x faster than the fused one, at the same agreement. The fused
    graph also does not quantize cleanly: quantize_static fails on it ("Unable to get valid
    quantization scale") unless ORT's symbolic shape inference runs first, its fused Attention op
    has no Q/DQ form (QKV projections stay fp32), and TensorRT's parser rejects its com.microsoft ops
    (EmbedLayerNormalization: "Plugin not found"). The unfused graph is standard ONNX plus Q/DQ,
    which OpenVINO runs and TensorRT parses. (ONNX Runtime runs neither fast: see the module docs.)
    """
    if ctx.plain_onnx_path is None or not ctx.plain_onnx_path.is_file():
        raise ConfigError("static_int8 quantizes the plain ONNX export, which is missing: add an 'export' step")
    if ctx.onnx_path != ctx.plain_onnx_path:
        progress.info("  static_int8: quantizing the unfused export (fused contrib ops defeat Q/DQ int8)")
    return ctx.plain_onnx_path


class _Quantizer:
    """quantize_static with fixed settings and a calibration cache, so each call only rewrites the graph."""

    def __init__(self, source: Path, config: StaticInt8Config, cache: Path, keep_fp32: tuple[str, ...]) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantType

        self.source, self.config, self.cache, self.keep_fp32 = source, config, cache, keep_fp32
        self.method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                       "entropy": CalibrationMethod.Entropy}[config.calibration_method]
        symmetric = config.activation_type == "int8"
        self.activation_type = QuantType.QInt8 if symmetric else QuantType.QUInt8
        # Biases stay float: an int32 bias DequantizeLinear (ORT's default for Gemm) is rejected by
        # TensorRT's parser, and the bias add is no int8 work anyway.
        self.extra_options = {"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": False}
        if not config.quantize_outputs:
            self.extra_options["OpTypesToExcludeOutputQuantization"] = list(config.op_types)
        # Options of the calibrator itself; ORT's per-method defaults otherwise (percentile: symmetric histogram).
        self.calibrator_options = {"percentile": config.percentile} if config.calibration_method == "percentile" else {}

    def calibrate(self, reader: TextCalibrationReader, scratch: Path) -> None:
        calibrate(self.source, reader, self.method, self.config.op_types, self.calibrator_options, self.cache, scratch)

    def quantize(self, out: Path, exclude: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> Path:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        quantize_static(
            str(self.source), str(out), None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(self.config.op_types),
            per_channel=self.config.per_channel, activation_type=self.activation_type, weight_type=QuantType.QInt8,
            nodes_to_quantize=list(only) or None, nodes_to_exclude=[*self.keep_fp32, *exclude],
            calibrate_method=self.method, extra_options=self.extra_options, calibration_cache_path=str(self.cache),
        )
        return out


@register_step(StaticInt8Config)
def quantize_static_int8(ctx: BuildContext, config: StaticInt8Config) -> StepOutput:
    import onnx

    calibration = require_calibration_examples(ctx.calibration_examples, config.step_type,
                                               config.num_calibration_examples)
    budget, eval_examples = ctx.budget, ctx.budget_examples()
    search = config.searches_fallback
    if search and not eval_examples:
        raise DataError("static_int8's fp32 fallback measures accuracy on eval data: pass --eval-data FILE.jsonl, "
                        "or set fallback = false in the static_int8 step")
    source = _source_graph(ctx)
    graph = onnx.load(str(source), load_external_data=False).graph
    quantizable = [n.name for n in graph.node if n.op_type in config.op_types]
    keep = match_patterns(quantizable, config.keep_fp32)
    max_len, threads = ctx.config.max_sequence_length, ctx.config.intra_op_threads
    out = ctx.work_dir / "model.int8-static.onnx"
    cache = ctx.work_dir / "calibration_ranges.json"
    cache.unlink(missing_ok=True)  # ranges from an earlier build of another graph must not be reused
    quantizer = _Quantizer(source, config, cache, keep)
    details: dict[str, Any] = {"file": out.name, "source": source.name, "calibration_method": config.calibration_method,
                               "activation_type": config.activation_type, "per_channel": config.per_channel}
    with tempfile.TemporaryDirectory(dir=ctx.work_dir, prefix="static_int8.") as tmp, quiet_ort():
        scratch = Path(tmp)
        reader = TextCalibrationReader(ctx.tokenizer, [e.text for e in calibration], [i.name for i in graph.input],
                                       max_length=max_len, batch_size=config.calibration_batch_size)
        progress.info(f"  calibrating ({config.calibration_method}) on {len(calibration)} examples padded to "
                      f"{reader.length} tokens, {len(reader)} batches")
        started = time.perf_counter()
        quantizer.calibrate(reader, scratch)
        details |= {"calibration_examples": len(calibration), "calibration_length": reader.length,
                    "calibration_seconds": round(time.perf_counter() - started, 2)}
        fallback_nodes: tuple[str, ...] = ()
        last_trial: Path | None = None
        if search:
            fallback_nodes, details["fallback"], last_trial = _fallback(ctx, quantizer, scratch, quantizable, keep,
                                                                        config, budget, eval_examples)
        if last_trial is not None:
            last_trial.replace(out)  # the search's last candidate is the chosen one: no need to rebuild it
        else:
            quantizer.quantize(out, exclude=fallback_nodes)
        fp32_nodes = [*keep, *fallback_nodes]
    details |= {"quantized_nodes": len(quantizable) - len(fp32_nodes), "fp32_nodes": fp32_nodes,
                "keep_fp32": list(keep), **qdq_summary(out)}
    if config.check_engines:
        details |= check_engines(out, threads)
    details |= {"size_mb": file_mb(out), "size_before_mb": file_mb(source)}
    precision = f"int8-static-qdq{'-uint8act' if config.activation_type == 'uint8' else ''}"
    return StepOutput(onnx_path=out, precision=precision, details=details)


def _fallback(ctx: BuildContext, quantizer: _Quantizer, scratch: Path, quantizable: list[str],
              keep: tuple[str, ...], config: StaticInt8Config, budget: Budget,
              examples: list[Any]) -> tuple[tuple[str, ...], dict[str, Any], Path | None]:
    """Measure, rank and search. Returns the nodes to keep fp32, the decision for the report, and the
    trial file when it already holds the chosen candidate."""
    max_len, threads = ctx.config.max_sequence_length, ctx.config.intra_op_threads
    texts = ctx.eval_texts(examples)

    def logits(path: Path, runtime: str) -> Any:
        return engine_logits(load_engine(path, runtime, threads), ctx.tokenizer, texts, max_len)

    # The budget is end to end, as validate judges it: against the original fp32 model, not this step's
    # input (after pruning and distillation the two differ, and the input may already use up the budget).
    reference = ctx.reference_logits(texts)
    before = ctx.compare(reference, logits(quantizer.source, REFERENCE_RUNTIME), examples)
    record: dict[str, Any] = {"budget": budget.to_dict(), "eval_examples": len(examples),
                              "fp32_input": before.figures()}
    if not budget.holds(before):
        reason = (f"the fp32 input is already outside the budget ({before.summary()}): no fp32 fallback can bring "
                  "it back")
        progress.info(f"  fallback skipped: {reason}")
        return (), record | {"budget_met": False, "stop_reason": reason}, None
    runtimes = [r for r in config.eval_runtimes if runtime_info(r).is_installed]
    trial = scratch / "trial.onnx"
    last: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    def evaluate(exclude: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> Comparison | EmbeddingComparison:
        quantizer.quantize(trial, exclude=exclude, only=only)
        last[:] = [(exclude, only)]
        results = [ctx.compare(reference, logits(trial, r), examples) for r in runtimes]
        return type(results[0]).worst(results)  # type: ignore[arg-type]

    baseline = evaluate()
    progress.info(f"  all quantized: {baseline.summary()}")
    groups = group_nodes([n for n in quantizable if n not in keep], config.sensitivity_granularity)
    ranking: list[Sensitivity] = []
    if not budget.holds(baseline):
        for index, (group, nodes) in enumerate(groups.items(), start=1):
            ranking.append(Sensitivity(group, nodes, evaluate(only=nodes)))
            progress.info(f"  sensitivity {index}/{len(groups)} {group}: {ranking[-1].metrics.summary()}")
        ranking = rank(ranking)
    decision = search_fallback(ranking, lambda excluded: evaluate(exclude=excluded), budget,
                               config.max_fallback_nodes, baseline, config.refine_nodes)
    chosen = decision.steps[decision.chosen]
    if not decision.budget_met:
        progress.info(f"  fallback: no candidate meets the budget ({decision.stop_reason}); keeping the best, "
                      "the validate step will report it")
    record |= {"eval_runtimes": runtimes, "granularity": config.sensitivity_granularity,
              "budget_met": decision.budget_met, "stop_reason": decision.stop_reason,
              "ranking": [s.to_dict() for s in ranking], "steps": [s.to_dict() for s in decision.steps],
              "chosen_step": decision.chosen, "fp32_groups": list(chosen.fp32_groups)}
    reusable = trial if last == [(decision.fp32_nodes, ())] else None
    return decision.fp32_nodes, record, reusable
