"""`engineforge tune`: sweep instance count, max batch size and queue delay with the project's load tester and keep
the best configuration for a latency SLO (what Triton Model Analyzer does, on our own models and load).

Every trial runs on a scratch copy of the repository (files hard-linked, configs rewritten), so the user's
repository is untouched until `apply=True` writes the winner's configs into it. Configs always come from
`build_model_configs` (dataclasses -> protobuf text_format), never hand-written pbtxt.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import ConfigError, EngineforgeError, RepositoryError
from engineforge.file_modes import atomic_write
from engineforge.serve.model_config import WARMUP_DIR, ModelConfig
from engineforge.serve.model_layout import build_model_configs, engine_model_name, version_model_name
from engineforge.serve.published import CONFIG, MANIFEST, entry_config_path, replace_config, version_models
from engineforge.serve.serving_defaults import ServingSettings
from engineforge.serve.tune_report import (
    LevelStats,
    SLONotMetError,
    Trial,
    TrialSettings,
    TuneResult,
    closest,
    pick_best,
    write_report,
)

__all__ = ["SLONotMetError", "TuneResult", "add_parser", "tune"]
DEFAULT_OUT = "reports/tune"


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same filesystem: instant, no extra disk for the engine files
    except OSError:
        shutil.copy2(src, dst)


def _scratch_copy(repo: Path, names: Sequence[str], version: int, scratch: Path) -> None:
    """The models the load needs, the serving version only, plus their manifests."""
    for name in names:
        source = repo / name
        if not (source / str(version)).is_dir():
            raise RepositoryError(f"{source} has no version {version}; republish the engine (build-engine)")
        shutil.copytree(source / str(version), scratch / name / str(version), copy_function=_link_or_copy)
        if (source / MANIFEST).is_file():  # the engine model checks its file against the published hash
            shutil.copy2(source / MANIFEST, scratch / name / MANIFEST)


def write_configs(repo: Path, configs: dict[str, ModelConfig], version: int | None = None) -> None:
    """Write each model's config.pbtxt (atomically) and warmup files into an existing repository; the models of
    a version first, its entry points last (they must not take larger batches than the models they run). With
    `version`, the entry-point configs kept for it (what a rollback to it restores) are rewritten too."""
    for kind in ("tokenizer", "engine", "ids", "ensemble"):
        config = configs.get(kind)  # a one-hop version has no tokenizer model
        model_dir = repo / config.name if config is not None else None
        if model_dir is None or not model_dir.is_dir():
            continue
        for filename, data in config.warmup_files.items():
            (model_dir / WARMUP_DIR).mkdir(exist_ok=True)
            atomic_write(model_dir / WARMUP_DIR / filename, data, published=True)
        if version is not None and kind in ("ids", "ensemble"):
            kept = entry_config_path(repo, configs["ensemble"].name, version, config.name)
            atomic_write(kept, config.to_pbtxt(), published=True)
        replace_config(model_dir, config.to_pbtxt())


def _kept_settings(model_dir: Path) -> dict[str, str]:
    """What the serving version was published with that tuning must not reset: its long-text policy and its text
    layout (one-hop or two-hop), as `build_model_configs` keywords."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from engineforge.engines.request_limits import DEFAULT_LONG_TEXTS, PREFIX
    from engineforge.serve.serving_defaults import TEXT_PATH_PARAMETER

    config = text_format.Parse((model_dir / CONFIG).read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    found = {name: config.parameters[key].string_value for name, key in
             (("long_texts", PREFIX + "long_texts"), ("text_path", TEXT_PATH_PARAMETER)) if key in config.parameters}
    # A version published before text_path existed is two-hop: it has a tokenizer model.
    return {"long_texts": DEFAULT_LONG_TEXTS, "text_path": "two-hop"} | found


def _configs(model: str, spec: EngineSpec, trial: TrialSettings, why: str, version: int,
             kept: dict[str, str]) -> dict[str, ModelConfig]:
    reasons = {"max_batch_size": f"{trial.max_batch_size}: {why}", "instances": f"{trial.instances}: {why}",
               "max_queue_delay_us": f"{trial.max_queue_delay_us}: {why}",
               "intra_op_threads": f"{spec.intra_op_threads}: from engine.json"}
    settings = ServingSettings(max_batch_size=trial.max_batch_size, max_queue_delay_us=trial.max_queue_delay_us,
                               instances=trial.instances, intra_op_threads=spec.intra_op_threads, reasons=reasons)
    try:
        return build_model_configs(model, spec, version=version, settings=settings, **kept)
    except ConfigError as exc:
        raise ConfigError(f"tune: {trial.label()}: {exc}") from exc


def _run_trial(scratch: Path, model: str, spec: EngineSpec, trial: TrialSettings, load: dict[str, Any],
               version: int, kept: dict[str, str]) -> Trial:
    from engineforge.loadtest.config import LoadTestConfig
    from engineforge.loadtest.runner import run_loadtest
    from engineforge.serve.server import TritonServer

    # Tokens mode needs only the engine model: a third of the server start-up per trial.
    write_configs(scratch, _configs(model, spec, trial, "tune trial", version, kept))
    target = engine_model_name(model) if load["mode"] == "tokens" else model
    try:
        with TritonServer(scratch, log_file=scratch / "tritonserver.log",
                          startup_timeout_s=load["startup_timeout_s"]) as server:
            result = run_loadtest(LoadTestConfig(
                model=target, url=server.grpc_url, mode=load["mode"], concurrency=load["concurrency"],
                duration_s=load["duration_s"], warmup_s=load["warmup_s"], seq_len=load["seq_len"],
                label=trial.label(), progress_every_s=0))
    except EngineforgeError as exc:  # a config the server refuses is a failed trial, not a failed sweep
        return Trial(trial, error=f"{type(exc).__name__}: {exc}")
    levels = tuple(LevelStats(lv.concurrency, lv.metrics.latency_p50_ms, lv.metrics.latency_p99_ms,
                              lv.metrics.throughput_rps, lv.metrics.errors) for lv in result.levels)
    aborted = next((lv.aborted for lv in result.levels if lv.aborted), None)
    return Trial(trial, levels, error=aborted)


def _check_settings(slo_p99_ms: float, grids: dict[str, Sequence[int]], mode: str) -> None:
    if not slo_p99_ms > 0:
        raise ConfigError(f"tune: the SLO must be a p99 latency > 0 ms, got {slo_p99_ms}")
    for what, values in grids.items():
        if not values or any(not isinstance(v, int) or v < (0 if what == "queue delays" else 1) for v in values):
            raise ConfigError(f"tune: {what} must be a non-empty list of integers (>= 1; delays >= 0), "
                              f"got {list(values)}")
    if mode not in ("tokens", "text"):
        raise ConfigError(f"tune: mode must be 'tokens' or 'text', got {mode!r}")


def _run_trials(repo_dir: Path, model: str, spec: EngineSpec, grid: list[TrialSettings], load: dict[str, Any],
                version: int, kept: dict[str, str]) -> list[Trial]:
    """Each grid point on a server of its own over a scratch copy of the serving version's models."""
    trials: list[Trial] = []
    scratch = Path(tempfile.mkdtemp(prefix="engineforge-tune-"))
    try:
        needed = [version_model_name(model, version, "engine"), engine_model_name(model)]
        if load["mode"] == "text":
            needed += [*version_models(repo_dir, model, version)[:-1], model]  # a two-hop version's tokenizer
        _scratch_copy(repo_dir, needed, version, scratch)
        for number, point in enumerate(grid, 1):
            trial = _run_trial(scratch, model, spec, point, load, version, kept)
            summary = trial.error or ", ".join(
                f"c{lv.concurrency}: p99 {lv.p99_ms or float('nan'):.2f} ms {lv.throughput_rps:.1f} req/s"
                for lv in trial.levels)
            progress.info(f"trial {number}/{len(grid)} {point.label()}: {summary}")
            trials.append(trial)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return trials


def tune(
    repo: str | os.PathLike[str],
    model: str,
    *,
    slo_p99_ms: float,
    instances: Sequence[int] = (1, 2),
    max_batch_sizes: Sequence[int] = (1, 8, 32),
    queue_delays_us: Sequence[int] = (0, 500, 2000),
    concurrency: Sequence[int] = (1, 4),
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    mode: str = "tokens",
    seq_len: int | None = None,
    out_dir: str | os.PathLike[str] = DEFAULT_OUT,
    apply: bool = False,
    startup_timeout_s: float = 120.0,
) -> TuneResult:
    """Run every (instances, max batch, queue delay) combination; return the trials and the best one.

    `model` is the published name (the ensemble); the engine model `<model>_engine` is what the load targets in
    "tokens" mode (token ids, `seq_len` = the engine's max sequence length by default), the ensemble in "text"
    mode. Raises SLONotMetError (after writing the report) when no combination meets `slo_p99_ms`.
    """
    repo_dir = Path(repo)
    _check_settings(slo_p99_ms, {"instances": instances, "max batch sizes": max_batch_sizes,
                                 "queue delays": queue_delays_us}, mode)
    from engineforge.serve.versions import serving_version

    version = serving_version(repo_dir, model)[0]
    engine_dir = repo_dir / version_model_name(model, version, "engine")
    spec, kept = EngineSpec.load(engine_dir / str(version)), _kept_settings(engine_dir)
    load = {"mode": mode, "concurrency": tuple(concurrency), "duration_s": duration_s, "warmup_s": warmup_s,
            "seq_len": seq_len or spec.max_sequence_length, "startup_timeout_s": startup_timeout_s}
    grid = [TrialSettings(*point) for point in itertools.product(instances, max_batch_sizes, queue_delays_us)]
    for point in grid:  # refuse an impossible combination before any server starts
        _configs(model, spec, point, "check", version, kept)
    with progress.stage(f"tune {model}: {len(grid)} trials, p99 SLO {slo_p99_ms:g} ms"):
        trials = _run_trials(repo_dir, model, spec, grid, load, version, kept)
    best = pick_best(trials, slo_p99_ms)
    json_path, md_path = write_report(Path(out_dir), model, slo_p99_ms, trials, best, load)
    progress.info(f"tune report: {md_path}")
    if best is None:
        near = closest(trials)
        detail = (f"the closest was {near.settings.label()} with p99 {near.worst_p99_ms:.2f} ms"
                  if near else "every trial failed to run")
        raise SLONotMetError(f"no configuration met the p99 SLO of {slo_p99_ms:g} ms ({len(trials)} tried); "
                             f"{detail}; relax the SLO or widen the grid (report: {md_path})", near, md_path)
    applied = None
    if apply:
        why = (f"engineforge tune: best of {len(trials)} trials, {best.throughput_rps:.1f} req/s with p99 "
               f"{best.worst_p99_ms:.2f} ms <= {slo_p99_ms:g} ms ({md_path})")
        write_configs(repo_dir, _configs(model, spec, best.settings, why, version, kept), version)
        applied = repo_dir / version_model_name(model, version, "engine") / CONFIG
        progress.info(f"applied {best.settings.label()} to {repo_dir}")
    return TuneResult(model, slo_p99_ms, tuple(trials), best, json_path, md_path, applied)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,8,32, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `tune` subcommand on an argparse subparsers object."""
    parser = subparsers.add_parser("tune", help="find the serving config with the best throughput for a p99 SLO",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repo", default="model_repo", help="Triton model repository the engine is published in")
    parser.add_argument("--model", required=True, help="published model name (the ensemble), e.g. intent")
    parser.add_argument("--slo-p99-ms", type=float, required=True, help="p99 latency every level must meet")
    parser.add_argument("--instances", type=_int_list, default=(1, 2), help="instance counts to try, e.g. 1,2")
    parser.add_argument("--max-batch", type=_int_list, default=(1, 8, 32), help="max batch sizes to try")
    parser.add_argument("--queue-delay-us", type=_int_list, default=(0, 500, 2000), help="queue delays to try")
    parser.add_argument("--concurrency", type=_int_list, default=(1, 4), help="load-test concurrency levels")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per level and trial")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per level and trial")
    parser.add_argument("--mode", choices=("tokens", "text"), default="tokens",
                        help="tokens: token ids to <model>_engine; text: strings through the ensemble")
    parser.add_argument("--apply", action="store_true", help="write the winner into the repository's configs")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where tune_report.{json,md} go")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from engineforge.cli_support import run_command

    def command() -> int:
        result = tune(args.repo, args.model, slo_p99_ms=args.slo_p99_ms, instances=args.instances,
                      max_batch_sizes=args.max_batch, queue_delays_us=args.queue_delay_us,
                      concurrency=args.concurrency, duration_s=args.duration, warmup_s=args.warmup, mode=args.mode,
                      out_dir=args.out, apply=args.apply)
        print(result.report_md.read_text(encoding="utf-8"))
        return 0

    return run_command("engineforge tune", command)
