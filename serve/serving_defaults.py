"""Serving settings derived from the engine and the machine instead of fixed numbers, and model warmup samples.

Why these rules (measured on the demo fast-cpu engine, 2 cores): a fixed 2000 us queue delay made every lone
request wait 2 ms for a batch that never came (served p50 6.6 ms vs 3.6 ms in-process). Triton's dynamic batcher
with delay 0 still merges the requests that queued while an instance was busy, so under load batching still
happens, and at low load nothing waits. Every value chosen is recorded, with its reason, in the engine model's
config `parameters` (`why.*`), so `config.pbtxt` explains itself.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from engineforge.engines import runtime_info
from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import ConfigError
from engineforge.machine import available_cores

from .model_config import WarmupInput, WarmupSample

# Each python-backend instance is its own stub process with its own copy of the engine: past a few, memory
# grows while a closed-loop client at usual concurrency (1-8) gains nothing.
MAX_CPU_INSTANCES = 4
WARMUP_TEXT = "warm up: where is my order?"
WHY = "why."  # prefix of the config parameters that explain each derived value
# How raw text reaches the engine: "one-hop" (the engine model tokenizes TEXT itself) or "two-hop" (a tokenizer model,
# then the engine model, joined by an ensemble: the older layout, kept so both can be served and compared).
TEXT_PATHS = ("one-hop", "two-hop")
DEFAULT_TEXT_PATH = "one-hop"
TEXT_PATH_PARAMETER = "text_path"
_TEXT_PATH_REASONS = {
    "one-hop": "one-hop: the engine model tokenizes TEXT itself, so a text request pays one python-backend hop; "
               "the two-hop layout paid two hops and an ensemble step on ~1 ms of work (demo engine, 2 cores: "
               "served p50 2.85 ms vs 1.18 ms in-process)",
    "two-hop": "two-hop: a tokenizer model then the engine model (the older layout, chosen at publish: "
               "text_path = \"two-hop\")",
}


@dataclass(frozen=True)
class ServingSettings:
    """What the engine model is published with, and why (`reasons`: field name -> one sentence)."""

    max_batch_size: int
    max_queue_delay_us: int
    instances: int
    intra_op_threads: int
    preferred_batch_sizes: tuple[int, ...] = ()
    warmup: bool = True
    reasons: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "preferred_batch_sizes", tuple(self.preferred_batch_sizes))
        object.__setattr__(self, "reasons", dict(self.reasons))
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}; use 0 for no wait")
        if self.instances < 1:
            raise ConfigError(f"instances must be >= 1, got {self.instances}")
        if any(s < 1 or s > self.max_batch_size for s in self.preferred_batch_sizes):
            raise ConfigError(f"preferred batch sizes {list(self.preferred_batch_sizes)} must be in "
                              f"[1, max_batch_size={self.max_batch_size}]")

    def parameters(self) -> dict[str, str]:
        """Config `parameters` entries: the thread setting and one `why.<field>` per derived value."""
        return {"intra_op_threads": str(self.intra_op_threads)} | {WHY + k: v for k, v in self.reasons.items()}


def check_text_path(text_path: str) -> str:
    """`text_path` if it is a known layout; ConfigError naming the choices otherwise."""
    if text_path not in TEXT_PATHS:
        raise ConfigError(f"text_path {text_path!r}: use one of {list(TEXT_PATHS)} (default {DEFAULT_TEXT_PATH!r})")
    return text_path


def text_path_parameters(text_path: str) -> dict[str, str]:
    """Config `parameters` recording the text layout and why."""
    return {TEXT_PATH_PARAMETER: check_text_path(text_path), WHY + TEXT_PATH_PARAMETER: _TEXT_PATH_REASONS[text_path]}


def derive_serving_settings(
    spec: EngineSpec,
    *,
    max_batch_size: int = 32,
    max_queue_delay_us: int | None = None,
    instances: int | None = None,
    cores: int | None = None,
    measured_latency_ms: float | None = None,
    warmup: bool = True,
    source: str = "given by the caller",
) -> ServingSettings:
    """Settings for `spec` on this machine; values given explicitly are kept (their reason says `source`).

    `measured_latency_ms` is the build's batch-1 latency (select_runtime step), quoted in the queue-delay reason.
    """
    cores = available_cores() if cores is None else cores
    threads = spec.intra_op_threads
    reasons = {"max_batch_size": f"{max_batch_size}: {source} (largest batch one engine call may take)"}
    if max_queue_delay_us is None:
        max_queue_delay_us = 0
        cost = f" (the build measured {measured_latency_ms:.2f} ms per batch-1 call)" if measured_latency_ms else ""
        reasons["max_queue_delay_us"] = (
            "0: a lone request never waits for a batch" + cost + "; requests that queue while an instance is busy "
            "are still batched, so batching happens under load")
    else:
        reasons["max_queue_delay_us"] = f"{max_queue_delay_us}: {source}"
    reasons["preferred_batch_sizes"] = ("none: the batcher sends what has queued, up to max_batch_size; preferred "
                                        "sizes only change anything when it may wait (queue delay > 0)")
    if instances is not None:
        reasons["instances"] = f"{instances}: {source}"
    elif runtime_info(spec.runtime).instances is not None:  # the runtime's own rule (TensorRT: 1 per GPU)
        instances = runtime_info(spec.runtime).instances
        reasons["instances"] = runtime_info(spec.runtime).instances_reason or f"{instances}: fixed by the runtime"
    elif planned := planned_instances(spec, cores):
        instances, reasons["instances"] = planned
    elif threads == 0:
        instances = 1
        reasons["instances"] = f"1: engine.json lets the runtime use all {cores} cores (intra_op_threads 0)"
    else:
        instances = max(1, min(cores // threads, MAX_CPU_INSTANCES))
        reasons["instances"] = (f"{instances}: {cores} cores // {threads} threads per instance, at most "
                                f"{MAX_CPU_INSTANCES} (each is a separate process with its own engine copy)")
    reasons["intra_op_threads"] = f"{threads}: from engine.json (0 = the runtime's default, all cores)"
    reasons["warmup"] = ("on: every instance runs a batch-1 and a max-batch request before READY, so the first "
                         "client request is not the one paying for lazy allocation" if warmup else "off")
    return ServingSettings(max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us, instances=instances,
                           intra_op_threads=threads, warmup=warmup, reasons=reasons)


def planned_instances(spec: EngineSpec, cores: int) -> tuple[int, str] | None:
    """(instances, why) from engine.json's serving_plan, measured by the build on its traffic profile; None for an
    engine.json without one (older builds, fixed threads) or measured on another number of cores, which fall back
    to cores // threads."""
    plan = spec.serving_plan or {}
    instances = plan.get("instances")
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        return None
    if plan.get("cores", cores) != cores:
        return None
    return instances, f"{instances}: from engine.json's serving_plan, {plan.get('why', 'measured by the build')}"


def _ones_file(seq_len: int) -> WarmupInput:
    # zero_data would give an all-0 attention mask, which the engine model rejects (and a failed sample fails
    # the model load); random_data fills int64s with random bytes, not 0/1. So the mask comes from a file.
    return WarmupInput("TYPE_INT64", (seq_len,), input_data_file=f"attention_mask_ones_{seq_len}.bin",
                       file_data=np.ones(seq_len, dtype="<i8").tobytes())


def _warmup_inputs(spec: EngineSpec, seq_len: int) -> dict[str, WarmupInput]:
    inputs = {"INPUT_IDS": WarmupInput("TYPE_INT64", (seq_len,), zero_data=True), "ATTENTION_MASK": _ones_file(seq_len)}
    if spec.uses_token_type_ids:
        inputs["TOKEN_TYPE_IDS"] = WarmupInput("TYPE_INT64", (seq_len,), zero_data=True)
    return inputs


def engine_warmup(spec: EngineSpec, max_batch_size: int) -> tuple[WarmupSample, ...]:
    """Batch 1 and max batch at the tokenizer's sequence length: zero ids ([PAD], a valid id) with a mask of 1s;
    with length buckets, batch 1 at each shorter bucket too (each has its own compiled model to wake)."""
    seq_len = spec.max_sequence_length
    inputs = _warmup_inputs(spec, seq_len)
    samples = [WarmupSample("batch_1", inputs, batch_size=1, count=2)]
    if max_batch_size > 1:
        samples.append(WarmupSample(f"batch_{max_batch_size}", inputs, batch_size=max_batch_size, count=1))
    samples += [WarmupSample(f"bucket_{bucket}", _warmup_inputs(spec, bucket), batch_size=1, count=1)
                for bucket in spec.length_buckets if bucket < seq_len]
    return tuple(samples)


def tokenizer_warmup() -> tuple[WarmupSample, ...]:
    """One short text. zero_data/random_data for TYPE_STRING both give empty strings, which the tokenizer model
    rejects, so the text comes from a file (4-byte little-endian length, then the UTF-8 bytes)."""
    text = WARMUP_TEXT.encode("utf-8")
    data = WarmupInput("TYPE_STRING", (1,), input_data_file="text.bin", file_data=struct.pack("<I", len(text)) + text)
    return (WarmupSample("text", {"TEXT": data}, batch_size=1, count=2),)
