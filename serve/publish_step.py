"""The `publish` step's function: the validated engine bundle as a new version in a Triton model repository.

Its config (`PublishConfig`) is build's plain data; the function is registered here, beside the repository it
writes, so build never imports serve. `engineforge.commands.build_engine` imports this module; a build that asks
to publish without it is refused before any work (`StepNotRegisteredError`)."""

from __future__ import annotations

from typing import Any

from engineforge.build.bundle import bundle_engine_mb, default_model_name, ensure_bundle
from engineforge.build.context import BuildContext
from engineforge.build.step_registry import register_step
from engineforge.build.steps.publish import PublishConfig
from engineforge.errors import ConfigError

from .repository import publish_engine


def _measured_latency_ms(ctx: BuildContext) -> float | None:
    """The batch-1 median latency of the chosen runtime, when this build timed runtimes (select_runtime)."""
    for record in reversed(ctx.records):
        value = record.details.get("median_ms") if record.name == "select_runtime" else None
        if isinstance(value, int | float):
            return float(value)
    return None


@register_step(PublishConfig)
def publish(ctx: BuildContext, config: PublishConfig) -> dict[str, Any]:
    bundle = ensure_bundle(ctx)
    if bundle is None:  # check_build refuses such a recipe; a direct call still gets a clear error
        raise ConfigError("publish needs an engine: add 'export' (or 'bnb_4bit') before it")
    name = config.model_name or default_model_name(ctx.config.checkpoint)
    published = publish_engine(bundle, config.repo_dir, name, max_batch_size=config.max_batch_size,
                               max_queue_delay_us=config.max_queue_delay_us, instances=config.instances,
                               native_repo_dir=config.native_repo_dir, measured_latency_ms=_measured_latency_ms(ctx),
                               long_texts=config.long_texts)
    ctx.published = {"repo_dir": str(config.repo_dir), "model_name": name, "version": published.version}
    if published.served is not None:  # a running `engineforge serve` loaded it (publish_engine waited for that)
        ctx.published["served"] = published.served
    if published.native_plan is not None:
        repo, plan_model, version = published.native_plan
        ctx.published["native_plan"] = {"repo_dir": str(repo), "model_name": plan_model, "version": version}
    return {"repo_dir": str(config.repo_dir), "model": name, "version": published.version,
            "engine_mb": bundle_engine_mb(bundle)} | (
        {"native_plan": f"{ctx.published['native_plan']['repo_dir']}/{ctx.published['native_plan']['model_name']}"}
        if "native_plan" in ctx.published else {})
