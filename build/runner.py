"""Run a whole build: refuse what cannot work, load and check the checkpoint, run the ordered steps,
bundle the engine, and write the report, manifest and recipe.

Everything that can be refused without work is checked before anything is written (the checkpoint first, then
the recipe, the tokenizer against the embedding table, the data files, the output directory): a refused build
leaves nothing behind. A build that fails while working keeps only its log, `build.log`, with the failed report
at its end, and the error names it: no half-built engine, recipe or manifest that looks like a build."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

from engineforge import ner, progress
from engineforge.data import Example, load_examples
from engineforge.engines.engine_spec import TOKEN_CLASSIFICATION
from engineforge.errors import ConfigError, EngineforgeError

from . import steps
from .bundle import bundle_engine_mb, ensure_bundle
from .checkpoint import CheckpointInfo, inspect_checkpoint, load_checkpoint, load_tokenizer
from .config import DATA_FIELDS, BuildConfig
from .context import BuildContext
from .files import file_mb
from .manifest import build_manifest, write_manifest
from .pipeline import BUILD_LOG, check_build, prepare_output_dir, run_steps
from .presets import dump_recipe
from .report import BuildReport, package_versions, traffic_summary
from .traffic_profile import build_traffic_profile


def run_build(config: BuildConfig, *, recipe_checked: bool = False) -> BuildReport:
    """Build, validate and (if the steps say so) publish. Returns the report; raises on failure, with the failed
    report at the end of the build log (and on the exception, as `report`). A recipe, checkpoint or data that
    cannot work is refused before anything is loaded or written; `recipe_checked`: the caller already ran
    `check_build` on this config (the search checks every candidate once, up front)."""
    _, examples = check_before_work(config, recipe_checked=recipe_checked)
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
            ctx = _start(config, examples, work_dir, report)
            run_steps(ctx)
            ensure_bundle(ctx)
        report.status = "ok"
    except BaseException as exc:
        report.status = "failed"
        report.error = f"{type(exc).__name__}: {exc}" if isinstance(exc, EngineforgeError) else repr(exc)
        _finish(report, ctx, config, started)
        keep_only_the_log(out_dir, report)
        if isinstance(exc, EngineforgeError):
            exc.report = report  # type: ignore[attr-defined]  # callers (the candidate search) read it here
            exc.args = (f"{exc} (log: {out_dir / BUILD_LOG})",)
        raise
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


def check_before_work(config: BuildConfig, *, recipe_checked: bool = False
                      ) -> tuple[CheckpointInfo, dict[str, list[Example]]]:
    """Every refusal that needs no work, in the order a user fixes them: is it a checkpoint, can the recipe run on
    it, does its tokenizer fit its embedding table, are the settings and data files usable. Nothing is written."""
    info = inspect_checkpoint(config.checkpoint, config.task)
    if not recipe_checked:
        check_build(config)
    if config.max_sequence_length > info.max_position_embeddings:
        raise ConfigError(
            f"max_sequence_length={config.max_sequence_length} exceeds the {info.max_position_embeddings} tokens "
            f"this {info.model_type} model's position embeddings hold (RoBERTa-style models start positions after "
            f"the padding index): pass --max-seq-len {info.max_position_embeddings} or less")
    load_tokenizer(info)
    entity_types = ner.entity_types(info.labels) if info.task == TOKEN_CLASSIFICATION else None
    examples = {}
    for kind in ("eval", "train", "calibration", "unlabelled", "traffic"):
        path = getattr(config, f"{kind}_data")
        if path is None:
            continue
        if kind == "traffic":  # real requests, only measured: labels are not needed, so not checked either
            examples[kind] = [Example(text=e.text) for e in load_examples(path)]
            continue
        rows = (load_examples(path, entity_types=entity_types) if entity_types is not None
                else load_examples(path, info.labels))
        # the teacher labels unlabelled text: any labels in the file are not used
        examples[kind] = [Example(text=e.text) for e in rows] if kind == "unlabelled" else rows
    return info, examples


def keep_only_the_log(out_dir: Path, report: BuildReport) -> None:
    """A failed build leaves its log, with the failed report at its end, and nothing else."""
    log = out_dir / BUILD_LOG
    with log.open("a", encoding="utf-8") as handle:
        handle.write("\n\n" + report.to_markdown())
    for entry in out_dir.iterdir():
        if entry != log:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _start(config: BuildConfig, examples: dict[str, list[Example]], work_dir: Path, report: BuildReport
           ) -> BuildContext:
    with progress.stage("load checkpoint"):
        info, model, tokenizer = load_checkpoint(config.checkpoint, config.task)
    ctx = BuildContext.start(config, work_dir, info, model, tokenizer, report.build_id)
    validate = config.step(steps.ValidateConfig)
    if isinstance(validate, steps.ValidateConfig):  # earlier steps judge candidates by the same budget
        ctx.budget, ctx.budget_max_examples = validate.budget, validate.max_examples
    report.checkpoint = info.to_dict()
    what = (f"embeddings, {info.pooling.mode} pooling{' + L2 normalize' if info.pooling.normalize else ''}"
            if info.pooling else f"{len(info.labels)} labels")
    progress.info(f"  {info.architecture} ({info.model_type}, {info.task}), {what}, "
                  f"weights {file_mb(info.weights_file)} MB")
    for kind, rows in examples.items():
        if kind != "traffic":  # read only for the profile below
            setattr(ctx, f"{kind}_examples", rows)
        progress.info(f"  {kind} data: {len(rows)} examples from {getattr(config, f'{kind}_data')}")
    ctx.traffic_profile = build_traffic_profile(config, tokenizer, examples)
    if ctx.traffic_profile is not None:
        progress.info(f"  traffic profile: {ctx.traffic_profile.describe()}, batch sizes "
                      f"{list(ctx.traffic_profile.batch_sizes)}")
        report.traffic_profile = traffic_summary(ctx.traffic_profile)
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
