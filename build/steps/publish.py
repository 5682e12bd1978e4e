"""`publish`'s settings: the validated engine bundle as a new version in a Triton model repository.

Plain data in build; the function that publishes lives with the repository it writes, in the serve layer
(engineforge.serve.publish_step), which registers it. Build never imports serve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from engineforge.defaults import DEFAULT_REPO, check_model_name

from ..config import ENGINE, STAGE_PUBLISH, StepConfig, require
from ..step_registry import register_config


@register_config
@dataclass(frozen=True)
class PublishConfig(StepConfig):
    """Publish the engine as a new version in a Triton model repository."""

    step_type: ClassVar[str] = "publish"
    stage: ClassVar[int] = STAGE_PUBLISH
    requires = frozenset({ENGINE})
    registered_by: ClassVar[str] = "engineforge.serve.publish_step"

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
    # How served text reaches the engine: "one-hop" (the engine model tokenizes TEXT itself: one python-backend hop)
    # or "two-hop" (a tokenizer model, then the engine model: the older layout, kept to compare the two).
    text_path: str = "one-hop"

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
        require(self.text_path in ("one-hop", "two-hop"),
                f"publish.text_path must be 'one-hop' (default) or 'two-hop', got {self.text_path!r}")
