"""`publish`: the validated engine bundle as a new version in a Triton model repository."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from engineforge.defaults import DEFAULT_REPO, check_model_name
from engineforge.errors import ConfigError

from ..bundle import bundle_engine_mb, default_model_name, ensure_bundle
from ..config import ENGINE, STAGE_PUBLISH, StepConfig, require
from ..context import BuildContext
from ..pipeline import register_step


@dataclass(frozen=True)
class PublishConfig(StepConfig):
    """Publish the engine as a new version in a Triton model repository."""

    step_type: ClassVar[str] = "publish"
    stage: ClassVar[int] = STAGE_PUBLISH
    requires = frozenset({ENGINE})

    repo_dir: str = DEFAULT_REPO
    # None = derived from the checkpoint directory name.
    model_name: str | None = None
    max_batch_size: int = 32
    # None = derived at publish time: queue delay 0 (a lone request never waits; queued requests still batch),
    # instances from the machine's cores and the engine's threads (engineforge.serve.serving_defaults).
    max_queue_delay_us: int | None = None
    instances: int | None = None
    # TensorRT engines only: where the native `tensorrt_plan` model goes (None = `<repo_dir>-tensorrt`).
    native_repo_dir: str | None = None
    # Served texts longer than the model reads: "truncate" (answer on their first tokens) or "refuse" them.
    long_texts: str = "truncate"

    def __post_init__(self) -> None:
        if self.model_name is not None:
            check_model_name(self.model_name, "publish.model_name")
        require(self.max_batch_size >= 1, f"publish.max_batch_size must be >= 1, got {self.max_batch_size}")
        require(self.max_queue_delay_us is None or self.max_queue_delay_us >= 0,
                "publish.max_queue_delay_us must be >= 0 (or left out to derive it)")
        require(self.instances is None or self.instances >= 1,
                f"publish.instances must be >= 1 (or left out to derive it), got {self.instances}")
        require(self.long_texts in ("truncate", "refuse"),
                f"publish.long_texts must be 'truncate' or 'refuse', got {self.long_texts!r}")


def _measured_latency_ms(ctx: BuildContext) -> float | None:
    """The batch-1 median latency of the chosen runtime, when this build timed runtimes (select_runtime)."""
    for record in reversed(ctx.records):
        value = record.details.get("median_ms") if record.name == "select_runtime" else None
        if isinstance(value, int | float):
            return float(value)
    return None


@register_step(PublishConfig)
def publish(ctx: BuildContext, config: PublishConfig) -> dict[str, Any]:
    from engineforge.serve.repository import publish_engine

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
