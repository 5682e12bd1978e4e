"""The one traffic profile of a build: the token lengths of the texts it will serve, which runtimes are timed on.

Where the texts come from, best first: the user's real requests (`traffic_data`), else the eval texts, else the
calibration texts, else the training texts (what the model was fine-tuned on is the nearest to what it will see).
Batch sizes: a lone request, and the batch Triton's dynamic batcher forms under the load tests users run
(concurrency 4 -> batches of 4), never above what the publish step lets one engine call take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engineforge.data import Example
from engineforge.engines.traffic import TrafficProfile, profile_from_texts

from .config import BuildConfig
from .steps.publish import PublishConfig

# Which data a profile is read from, best first (kinds as runner.check_before_work loads them).
PROFILE_SOURCES = ("traffic", "eval", "calibration", "train")
# Closed-loop clients at the usual load-test concurrency (4) keep about that many requests queued per batch.
LOAD_TEST_CONCURRENCY = 4


def profile_batch_sizes(config: BuildConfig) -> tuple[int, ...]:
    """(1, 4), capped by the publish step's max_batch_size (a build without one: the default's)."""
    publish = config.step(PublishConfig)
    cap = publish.max_batch_size if isinstance(publish, PublishConfig) else PublishConfig().max_batch_size
    return tuple(sorted({1, min(LOAD_TEST_CONCURRENCY, cap)}))


def build_traffic_profile(config: BuildConfig, tokenizer: Any,
                          examples: Mapping[str, Sequence[Example]]) -> TrafficProfile | None:
    """The profile of the best source given (see the module docstring); None when the build has no texts at all."""
    for kind in PROFILE_SOURCES:
        rows = examples.get(kind)
        if rows:
            source = f"{kind} data {getattr(config, f'{kind}_data').resolve()}"
            return profile_from_texts(tokenizer, [e.text for e in rows], config.max_sequence_length, source,
                                      profile_batch_sizes(config))
    return None
