"""The native Triton model of a TensorRT bundle: `<name>_plan`, platform `tensorrt_plan`, for standard Triton GPU
servers (published into a second repository beside the engineforge one; see repository.py)."""

from __future__ import annotations

import json

from engineforge.engines.engine_spec import EngineSpec
from engineforge.engines.tensorrt_engine import PLAN_FILE, TensorRTMetadata
from engineforge.errors import ConfigError, EngineLoadError

from .model_config import TENSORRT_PLAN, DynamicBatching, InstanceGroup, ModelConfig, TensorSpec
from .model_layout import LABELS_PARAMETER

PLAN_SUFFIX = "_plan"
PLAN_FILENAME = PLAN_FILE  # the file Triton's TensorRT backend reads in a version directory
# TensorRT tensor types (engine metadata) -> Triton data types.
TRT_TO_TRITON = {"INT64": "TYPE_INT64", "INT32": "TYPE_INT32", "FLOAT": "TYPE_FP32", "HALF": "TYPE_FP16",
                 "BF16": "TYPE_BF16", "BOOL": "TYPE_BOOL"}


def plan_model_name(model_name: str) -> str:
    return model_name + PLAN_SUFFIX


def build_plan_config(model_name: str, spec: EngineSpec, *, max_batch_size: int, max_queue_delay_us: int,
                      instances: int = 1) -> ModelConfig:
    """A native Triton TensorRT model for the bundle's plan: the engine's own tensors (token ids in, logits out),
    GPU instances on profile 0, dynamic batching up to the profile's max batch."""
    if spec.tensorrt is None:
        raise ConfigError(f"{spec.source}: not a TensorRT engine; only TensorRT builds have a native plan model")
    try:
        profile_max = TensorRTMetadata.from_dict(spec.tensorrt, spec.source).max_batch_size
    except EngineLoadError as exc:
        raise ConfigError(str(exc)) from exc
    if max_batch_size > profile_max:
        raise ConfigError(f"max_batch_size {max_batch_size} exceeds the engine profile's max batch {profile_max}; "
                          "lower it or rebuild with a larger compile.max_shape")

    def tensor(meta: dict, dims: tuple[int, ...]) -> TensorSpec:
        if meta["dtype"] not in TRT_TO_TRITON:
            raise ConfigError(f"{spec.source}: tensor {meta['name']!r} has type {meta['dtype']}, which Triton's "
                              "TensorRT backend does not take")
        return TensorSpec(meta["name"], TRT_TO_TRITON[meta["dtype"]], dims)

    return ModelConfig(
        name=plan_model_name(model_name),
        platform=TENSORRT_PLAN,
        default_model_filename=PLAN_FILENAME,
        max_batch_size=max_batch_size,
        inputs=tuple(tensor(t, (-1,)) for t in spec.tensorrt["inputs"]),
        outputs=tuple(tensor(t, (spec.embedding_dim if spec.is_embedding else spec.num_labels,))
                      for t in spec.tensorrt["outputs"]),
        dynamic_batching=DynamicBatching(max_queue_delay_us=max_queue_delay_us),
        instance_group=InstanceGroup(count=instances, kind="GPU", profiles=("0",)),
        parameters={LABELS_PARAMETER: json.dumps(list(spec.labels)), "build_id": spec.build_id,
                    "precision": spec.precision, "tensorrt": f"{spec.tensorrt['flavour']} {spec.tensorrt['version']}",
                    "profile": json.dumps(spec.tensorrt["profiles"][0])},
    )
