"""Run a whole build: load and check the checkpoint, run the ordered steps, package, report."""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

from engineforge import progress
from engineforge.errors import ConfigError, EngineforgeError

# Importing the step modules registers their step functions.
from . import (  # noqa: F401
    distill,
    export,
    optimize,
    package,
    prune,
    quantize,
    select_runtime,
    static_quant,
    validate,
    weight_only,
)
from .checkpoint import load_checkpoint
from .config import DATA_FIELDS, STAGE_EXPORT, BuildConfig
from .data import Example, load_examples
from .inference import file_mb
from .manifest import build_manifest, write_manifest
from .pipeline import BuildContext, check_step_order, prepare_output_dir, run_steps
from .presets import dump_recipe
from .report import package_versions, write_reports


def run_build(config: BuildConfig) -> dict[str, Any]:
    """Build, validate and (if the steps say so) publish. Returns the report; raises on failure
    after writing the report, so a failed build still explains itself on disk."""
    check_step_order(config.steps)
    out_dir = prepare_output_dir(config)
    work_dir = out_dir / "work"
    work_dir.mkdir(exist_ok=True)
    ctx = BuildContext(config=config, work_dir=work_dir)
    started = time.perf_counter()
    report: dict[str, Any] = {"status": "running", "preset": config.preset, "build_id": uuid.uuid4().hex[:12],
                              "settings": {"max_sequence_length": config.max_sequence_length,
                                           "intra_op_threads": config.intra_op_threads},
                              "recipe": [s.to_dict() for s in config.steps], "versions": package_versions()}
    try:
        with progress.stage("load checkpoint"):
            info, model, tokenizer = load_checkpoint(config.checkpoint)
        if config.max_sequence_length > info.max_position_embeddings:
            raise ConfigError(f"max_sequence_length={config.max_sequence_length} exceeds the model's "
                              f"max_position_embeddings={info.max_position_embeddings}")
        # Torch-level steps (pruning, distillation) change the model; the fp32 reference must stay intact.
        changes_torch_model = any(s.stage < STAGE_EXPORT for s in config.steps)
        ctx.reference_model, ctx.tokenizer = model, tokenizer
        ctx.model = copy.deepcopy(model) if changes_torch_model else model
        ctx.labels = list(info.labels)
        ctx.checkpoint_info = info.to_dict() | {"build_id": report["build_id"]}
        report["checkpoint"] = info.to_dict()
        progress.info(f"  {info.architecture} ({info.model_type}), {len(info.labels)} labels, "
                      f"weights {file_mb(info.weights_file)} MB")
        for kind in ("eval", "train", "calibration", "unlabelled"):
            path = getattr(config, f"{kind}_data")
            if path is not None:
                examples = load_examples(path, ctx.labels)
                if kind == "unlabelled":  # the teacher labels this text; any labels in the file are not used
                    examples = [Example(text=e.text) for e in examples]
                setattr(ctx, f"{kind}_examples", examples)
                progress.info(f"  {kind} data: {len(examples)} examples from {path}")
        run_steps(ctx)
        package.ensure_bundle(ctx)
        report["status"] = "ok"
    except EngineforgeError as exc:
        report["status"] = "failed"
        report["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _finish_report(report, ctx, started)
        # Absolute paths: `build-engine --recipe out/recipe.toml` repeats this build from anywhere.
        (out_dir / "recipe.toml").write_text(dump_recipe(config.steps, {
            "checkpoint": config.checkpoint.resolve(),
            **{k: getattr(config, k) and getattr(config, k).resolve()
               for k in DATA_FIELDS},
            "max_sequence_length": config.max_sequence_length, "intra_op_threads": config.intra_op_threads}))
        write_reports(report, out_dir)
        write_manifest(build_manifest(report, config.checkpoint, {
            field.removesuffix("_data"): getattr(config, field) for field in DATA_FIELDS}, ctx.bundle_dir), out_dir)
    return report


def _finish_report(report: dict[str, Any], ctx: BuildContext, started: float) -> None:
    report["total_seconds"] = round(time.perf_counter() - started, 2)
    report["precision"] = ctx.precision
    report["runtime"] = ctx.runtime
    report["steps"] = [{"name": r.name, "seconds": round(r.seconds, 3), "details": r.details} for r in ctx.records]
    report["validation"] = ctx.validation
    report["published"] = ctx.published
    sizes = {}
    if "weights_file" in ctx.checkpoint_info:
        sizes["checkpoint weights"] = file_mb(ctx.config.checkpoint / ctx.checkpoint_info["weights_file"])
    for record in ctx.records:
        if "file" in record.details:
            sizes[record.details["file"]] = record.details.get("size_mb")
    if ctx.bundle_dir is not None:
        sizes["engine (published)"] = package.bundle_engine_mb(ctx.bundle_dir)
        report["bundle_dir"] = str(ctx.bundle_dir)
    report["sizes_mb"] = sizes
