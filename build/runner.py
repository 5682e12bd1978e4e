"""Run a whole build: refuse what cannot work, load and check the checkpoint, run the ordered steps,
bundle the engine, and write the report, manifest and recipe (also when the build fails)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from engineforge import progress
from engineforge.errors import ConfigError, EngineforgeError

from . import steps
from .bundle import bundle_engine_mb, ensure_bundle
from .checkpoint import load_checkpoint
from .config import DATA_FIELDS, BuildConfig
from .context import BuildContext
from .data import Example, load_examples
from .files import file_mb
from .manifest import build_manifest, write_manifest
from .pipeline import BUILD_LOG, check_build, prepare_output_dir, run_steps
from .presets import dump_recipe
from .report import BuildReport, package_versions


def run_build(config: BuildConfig) -> BuildReport:
    """Build, validate and (if the steps say so) publish. Returns the report; raises on failure after writing
    the report, so a failed build still explains itself on disk. A recipe that cannot work is refused before
    anything is loaded or written."""
    check_build(config)
    out_dir = prepare_output_dir(config)
    work_dir = out_dir / "work"
    work_dir.mkdir(exist_ok=True)
    started = time.perf_counter()
    report = BuildReport(build_id=uuid.uuid4().hex[:12], preset=config.preset,
                         settings={"max_sequence_length": config.max_sequence_length,
                                   "intra_op_threads": config.intra_op_threads},
                         recipe=[s.to_dict() for s in config.steps], versions=package_versions())
    ctx: BuildContext | None = None
    try:
        with progress.third_party_logs_to(out_dir / BUILD_LOG):
            ctx = _start(config, work_dir, report)
            run_steps(ctx)
            ensure_bundle(ctx)
        report.status = "ok"
    except EngineforgeError as exc:
        report.status, report.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        _finish(report, ctx, config, started)
        # Absolute paths: `build-engine --recipe out/recipe.toml` repeats this build from anywhere.
        (out_dir / "recipe.toml").write_text(dump_recipe(config.steps, {
            "checkpoint": config.checkpoint.resolve(),
            **{k: getattr(config, k) and getattr(config, k).resolve() for k in DATA_FIELDS},
            "max_sequence_length": config.max_sequence_length, "intra_op_threads": config.intra_op_threads,
            "max_build_minutes": config.max_build_minutes}))
        report.write(out_dir)
        write_manifest(build_manifest(report, config.checkpoint, {
            name.removesuffix("_data"): getattr(config, name) for name in DATA_FIELDS},
            ctx.bundle_dir if ctx else None), out_dir)
    return report


def _start(config: BuildConfig, work_dir: Path, report: BuildReport) -> BuildContext:
    with progress.stage("load checkpoint"):
        info, model, tokenizer = load_checkpoint(config.checkpoint, config.task)
    if config.max_sequence_length > info.max_position_embeddings:
        raise ConfigError(
            f"max_sequence_length={config.max_sequence_length} exceeds the {info.max_position_embeddings} tokens "
            f"this {info.model_type} model's position embeddings hold (RoBERTa-style models start positions after "
            f"the padding index): pass --max-seq-len {info.max_position_embeddings} or less")
    ctx = BuildContext.start(config, work_dir, info, model, tokenizer, report.build_id)
    validate = config.step(steps.ValidateConfig)
    if isinstance(validate, steps.ValidateConfig):  # earlier steps judge candidates by the same budget
        ctx.budget, ctx.budget_max_examples = validate.budget, validate.max_examples
    report.checkpoint = info.to_dict()
    what = (f"embeddings, {info.pooling.mode} pooling{' + L2 normalize' if info.pooling.normalize else ''}"
            if info.pooling else f"{len(info.labels)} labels")
    progress.info(f"  {info.architecture} ({info.model_type}, {info.task}), {what}, "
                  f"weights {file_mb(info.weights_file)} MB")
    for kind in ("eval", "train", "calibration", "unlabelled"):
        path = getattr(config, f"{kind}_data")
        if path is not None:
            examples = (load_examples(path, entity_types=ctx.entity_types) if ctx.is_token_task
                        else load_examples(path, ctx.labels))
            if kind == "unlabelled":  # the teacher labels this text; any labels in the file are not used
                examples = [Example(text=e.text) for e in examples]
            setattr(ctx, f"{kind}_examples", examples)
            progress.info(f"  {kind} data: {len(examples)} examples from {path}")
    return ctx


def _finish(report: BuildReport, ctx: BuildContext | None, config: BuildConfig, started: float) -> None:
    report.total_seconds = round(time.perf_counter() - started, 2)
    if ctx is None:
        return
    report.precision, report.runtime = ctx.precision, ctx.runtime
    report.steps = list(ctx.records)
    report.validation, report.published = ctx.validation, ctx.published
    sizes: dict[str, float | None] = {"checkpoint weights": file_mb(ctx.checkpoint.weights_file)}
    for record in ctx.records:
        if "file" in record.details:
            sizes[record.details["file"]] = record.details.get("size_mb")
    if ctx.bundle_dir is not None:
        sizes["engine (published)"] = bundle_engine_mb(ctx.bundle_dir)
        report.bundle_dir = str(ctx.bundle_dir)
    report.sizes_mb = sizes
