"""The `publish` step's function: the validated engine bundle as a new version in a Triton model repository.

Its config (`PublishConfig`) is build's plain data; the function is registered here, beside the repository it
writes, so build never imports serve. `engineforge.commands.build_engine` imports this module; a build that asks
to publish without it is refused before any work (`StepNotRegisteredError`)."""

from __future__ import annotations

from typing import Any

from engineforge.build.bundle import bundle_engine_mb, default_model_name, ensure_bundle
from engineforge.build.context import BuildContext
from engineforge.build.step_output import StepOutput
from engineforge.build.step_registry import register_step
from engineforge.build.steps.publish import PublishConfig

from .repository import publish_engine


def _measured_latency_ms(ctx: BuildContext) -> float | None:
    """The batch-1 median latency of the chosen runtime, when this build timed runtimes (select_runtime)."""
    for record in reversed(ctx.records):
        value = record.details.get("median_ms") if record.name == "select_runtime" else None
        if isinstance(value, int | float):
            return float(value)
    return None


@register_step(PublishConfig)
def publish(ctx: BuildContext, config: PublishConfig) -> StepOutput:
    bundle = ensure_bundle(ctx)
    assert bundle is not None  # ENGINE: check_build follows it here, run_step holds every step to it
    name = config.model_name or default_model_name(ctx.config.checkpoint)
    published = publish_engine(bundle, config.repo_dir, name, max_batch_size=config.max_batch_size,
                               max_queue_delay_us=config.max_queue_delay_us, instances=config.instances,
                               native_repo_dir=config.native_repo_dir, measured_latency_ms=_measured_latency_ms(ctx),
                               long_texts=config.long_texts, text_path=config.text_path)
    record: dict[str, Any] = {"repo_dir": str(config.repo_dir), "model_name": name, "version": published.version}
    if published.served is not None:  # a running `engineforge serve` loaded it (publish_engine waited for that)
        record["served"] = published.served
    details = {"repo_dir": str(config.repo_dir), "model": name, "version": published.version,
               "engine_mb": bundle_engine_mb(bundle)}
    if published.native_plan is not None:
        repo, plan_model, version = published.native_plan
        record["native_plan"] = {"repo_dir": str(repo), "model_name": plan_model, "version": version}
        details["native_plan"] = f"{repo}/{plan_model}"
    return StepOutput(published=record, details=details)
