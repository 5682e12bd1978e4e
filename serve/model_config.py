"""Triton `config.pbtxt` as validated frozen dataclasses.

We never write pbtxt by hand: dataclasses -> `model_config_pb2.ModelConfig` -> `text_format`, so a
typo in a field name fails here, not when Triton loads the repository.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from engineforge.defaults import check_model_name
from engineforge.errors import ConfigError

from .model_warmup import DTYPES, WARMUP_DIR, WarmupInput, WarmupSample, check_tensor_name

__all__ = ["DTYPES", "ENSEMBLE", "TENSORRT_PLAN", "WARMUP_DIR", "DynamicBatching", "EnsembleStep", "InstanceGroup",
           "ModelConfig", "TensorSpec", "WarmupInput", "WarmupSample", "validate_ensemble"]

INSTANCE_KINDS = {"CPU": pb.ModelInstanceGroup.KIND_CPU, "GPU": pb.ModelInstanceGroup.KIND_GPU}
ENSEMBLE = "ensemble"
TENSORRT_PLAN = "tensorrt_plan"
PLATFORMS = (ENSEMBLE, TENSORRT_PLAN)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. `dims` excludes the batch dimension when max_batch_size > 0."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False
    allow_ragged_batch: bool = False

    def __post_init__(self) -> None:
        check_tensor_name(self.name)
        if self.dtype not in DTYPES:
            raise ConfigError(f"tensor {self.name!r}: unknown dtype {self.dtype!r}; use one of {sorted(DTYPES)}")
        object.__setattr__(self, "dims", tuple(self.dims))
        if not self.dims or any(not isinstance(d, int) or d == 0 or d < -1 for d in self.dims):
            raise ConfigError(
                f"tensor {self.name!r}: dims {list(self.dims)} invalid; give at least one dim, "
                "each a positive size or -1 for variable"
            )

    def to_input(self) -> pb.ModelInput:
        return pb.ModelInput(
            name=self.name,
            data_type=pb.DataType.Value(self.dtype),
            dims=self.dims,
            optional=self.optional,
            allow_ragged_batch=self.allow_ragged_batch,
        )

    def to_output(self) -> pb.ModelOutput:
        if self.optional or self.allow_ragged_batch:
            raise ConfigError(f"output {self.name!r}: optional/allow_ragged_batch apply to inputs only")
        return pb.ModelOutput(name=self.name, data_type=pb.DataType.Value(self.dtype), dims=self.dims)


@dataclass(frozen=True)
class DynamicBatching:
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "preferred_batch_sizes", tuple(self.preferred_batch_sizes))
        if any(size < 1 for size in self.preferred_batch_sizes):
            raise ConfigError(f"preferred batch sizes must be >= 1, got {list(self.preferred_batch_sizes)}")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")


@dataclass(frozen=True)
class InstanceGroup:
    count: int = 1
    kind: str = "CPU"
    # TensorRT plans: the optimization profiles an instance may use ("0", ...); empty = all.
    profiles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "profiles", tuple(self.profiles))
        if self.count < 1:
            raise ConfigError(f"instance count must be >= 1, got {self.count}")
        if self.profiles and self.kind != "GPU":
            raise ConfigError("instance profiles apply to TensorRT plans on GPU instances only (kind 'GPU')")
        if self.kind not in INSTANCE_KINDS:
            raise ConfigError(f"instance kind {self.kind!r} unknown; use one of {sorted(INSTANCE_KINDS)}")


@dataclass(frozen=True)
class EnsembleStep:
    """One composing model call. Maps are {model tensor name: ensemble tensor name}."""

    model_name: str
    input_map: Mapping[str, str]
    output_map: Mapping[str, str]
    model_version: int = -1  # -1: whatever version the composing model serves (its latest)

    def __post_init__(self) -> None:
        check_model_name(self.model_name, "ensemble step model name")
        object.__setattr__(self, "input_map", dict(self.input_map))
        object.__setattr__(self, "output_map", dict(self.output_map))
        if not self.input_map or not self.output_map:
            raise ConfigError(f"ensemble step {self.model_name!r} needs at least one input and one output")
        if self.model_version < -1 or self.model_version == 0:
            raise ConfigError(f"ensemble step {self.model_name!r}: model_version must be -1 or >= 1")


@dataclass(frozen=True)
class ModelConfig:
    """A whole `config.pbtxt`. Exactly one of backend (e.g. "python") or a platform ("ensemble", "tensorrt_plan")."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    backend: str | None = None
    platform: str | None = None
    dynamic_batching: DynamicBatching | None = None
    instance_group: InstanceGroup | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    ensemble_steps: tuple[EnsembleStep, ...] = ()
    default_model_filename: str = ""  # e.g. "model.plan"; empty = the backend's default
    model_warmup: tuple[WarmupSample, ...] = ()
    versions: tuple[int, ...] = ()  # version_policy specific: the versions Triton loads; empty = the latest
    decoupled: bool = False  # model_transaction_policy: any number of responses per request (streamed LM tokens)

    def __post_init__(self) -> None:
        check_model_name(self.name)
        for attr in ("inputs", "outputs", "ensemble_steps", "model_warmup", "versions"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        object.__setattr__(self, "parameters", dict(self.parameters))
        where = f"model {self.name!r}"
        if (self.backend is None) == (self.platform is None):
            raise ConfigError(f"{where}: set exactly one of backend (e.g. 'python') or a platform {list(PLATFORMS)}")
        if self.platform is not None and self.platform not in PLATFORMS:
            raise ConfigError(f"{where}: platform {self.platform!r} unsupported; use one of {list(PLATFORMS)} "
                              "or backend=")
        if self.max_batch_size < 0:
            raise ConfigError(f"{where}: max_batch_size must be >= 0, got {self.max_batch_size}")
        if not self.inputs or not self.outputs:
            raise ConfigError(f"{where}: needs at least one input and one output")
        names = [t.name for t in (*self.inputs, *self.outputs)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"{where}: duplicate tensor names {duplicates}; each input/output needs its own")
        if self.is_ensemble:
            if not self.ensemble_steps:
                raise ConfigError(f"{where}: an ensemble needs ensemble_steps")
            if self.dynamic_batching or self.instance_group:
                raise ConfigError(
                    f"{where}: ensembles take no dynamic_batching/instance_group; set them on the composing models"
                )
            self._check_ensemble_wiring()
        elif self.ensemble_steps:
            raise ConfigError(f"{where}: ensemble_steps need platform='ensemble'")
        if self.dynamic_batching is not None:
            too_big = [s for s in self.dynamic_batching.preferred_batch_sizes if s > self.max_batch_size]
            if too_big:
                raise ConfigError(
                    f"{where}: preferred batch sizes {too_big} exceed max_batch_size {self.max_batch_size}; "
                    "lower them or raise max_batch_size"
                )
        if any(not isinstance(v, int) or v < 1 for v in self.versions):
            raise ConfigError(f"{where}: versions {list(self.versions)} must be version numbers >= 1")
        for key, value in self.parameters.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigError(f"{where}: parameters must map strings to strings, got {key!r}: {value!r}")
        self._check_warmup(where)

    def _check_warmup(self, where: str) -> None:
        if self.model_warmup and self.is_ensemble:
            raise ConfigError(f"{where}: Triton refuses model_warmup on ensembles; warm up the composing models")
        names = [w.name for w in self.model_warmup]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: duplicate warmup sample names {names}; give each its own")
        files: dict[str, bytes | None] = {}
        inputs = {t.name: t for t in self.inputs}
        for sample in self.model_warmup:
            what = f"{where} warmup sample {sample.name!r}"
            if sample.batch_size > max(1, self.max_batch_size):
                raise ConfigError(f"{what}: batch_size {sample.batch_size} exceeds max_batch_size "
                                  f"{self.max_batch_size}; lower it")
            unknown = sorted(set(sample.inputs) - set(inputs))
            missing = sorted(n for n, t in inputs.items() if not t.optional and n not in sample.inputs)
            if unknown or missing:
                raise ConfigError(f"{what}: unknown inputs {unknown}, missing required inputs {missing}; "
                                  f"the model's inputs are {sorted(inputs)}")
            for name, data in sample.inputs.items():
                spec = inputs[name]
                fits = len(data.dims) == len(spec.dims) and all(
                    s in (-1, d) for s, d in zip(spec.dims, data.dims, strict=True))
                if data.dtype != spec.dtype or not fits:
                    raise ConfigError(f"{what}: input {name!r} is {data.dtype} {list(data.dims)} but the model takes "
                                      f"{spec.dtype} {list(spec.dims)}")
                if data.input_data_file:
                    if data.input_data_file in files and files[data.input_data_file] != data.file_data:
                        raise ConfigError(f"{what}: warmup file {data.input_data_file!r} is given two contents")
                    files[data.input_data_file] = data.file_data

    @property
    def warmup_files(self) -> dict[str, bytes]:
        """{file name: content} the publisher writes into the model's `warmup/` folder."""
        return {d.input_data_file: d.file_data for w in self.model_warmup for d in w.inputs.values()
                if d.input_data_file and d.file_data is not None}

    @property
    def is_ensemble(self) -> bool:
        return self.platform == ENSEMBLE

    def tensor(self, name: str) -> TensorSpec:
        for spec in (*self.inputs, *self.outputs):
            if spec.name == name:
                return spec
        raise KeyError(name)

    def _check_ensemble_wiring(self) -> None:
        # Every tensor a step consumes must exist before it, and every ensemble output must be produced.
        available = {t.name for t in self.inputs}
        for step in self.ensemble_steps:
            missing = sorted(set(step.input_map.values()) - available)
            if missing:
                raise ConfigError(
                    f"ensemble {self.name!r}: step {step.model_name!r} consumes {missing} which no earlier "
                    "step produces and which are not ensemble inputs"
                )
            available |= set(step.output_map.values())
        unproduced = sorted({t.name for t in self.outputs} - available)
        if unproduced:
            raise ConfigError(f"ensemble {self.name!r}: outputs {unproduced} are not produced by any step")

    def to_protobuf(self) -> pb.ModelConfig:
        config = pb.ModelConfig(name=self.name, max_batch_size=self.max_batch_size)
        if self.backend is not None:
            config.backend = self.backend
        else:
            config.platform = self.platform
        if self.decoupled:
            config.model_transaction_policy.decoupled = True
        if self.default_model_filename:
            config.default_model_filename = self.default_model_filename
        if self.versions:
            config.version_policy.specific.versions.extend(self.versions)
        config.input.extend(t.to_input() for t in self.inputs)
        config.output.extend(t.to_output() for t in self.outputs)
        if self.dynamic_batching is not None:
            config.dynamic_batching.preferred_batch_size.extend(self.dynamic_batching.preferred_batch_sizes)
            config.dynamic_batching.max_queue_delay_microseconds = self.dynamic_batching.max_queue_delay_us
        if self.instance_group is not None:
            config.instance_group.add(count=self.instance_group.count, kind=INSTANCE_KINDS[self.instance_group.kind],
                                      profile=self.instance_group.profiles)
        for key in sorted(self.parameters):
            config.parameters[key].string_value = self.parameters[key]
        config.model_warmup.extend(w.to_protobuf() for w in self.model_warmup)
        for step in self.ensemble_steps:
            config.ensemble_scheduling.step.add(
                model_name=step.model_name,
                model_version=step.model_version,
                input_map=step.input_map,
                output_map=step.output_map,
            )
        return config

    def to_pbtxt(self) -> str:
        return text_format.MessageToString(self.to_protobuf())


def validate_ensemble(ensemble: ModelConfig, members: Sequence[ModelConfig]) -> None:
    """Check an ensemble against the configs of the models it calls (Triton checks this only at load)."""
    if not ensemble.is_ensemble:
        raise ConfigError(f"model {ensemble.name!r} is not an ensemble")
    by_name = {m.name: m for m in members}
    for step in ensemble.ensemble_steps:
        member = by_name.get(step.model_name)
        if member is None:
            raise ConfigError(f"ensemble {ensemble.name!r}: step model {step.model_name!r} is not being published")
        if ensemble.max_batch_size > member.max_batch_size:
            raise ConfigError(
                f"ensemble {ensemble.name!r}: max_batch_size {ensemble.max_batch_size} exceeds that of "
                f"{member.name!r} ({member.max_batch_size}); lower the ensemble's or raise the member's"
            )
        member_inputs = {t.name for t in member.inputs}
        member_outputs = {t.name for t in member.outputs}
        bad_in = sorted(set(step.input_map) - member_inputs)
        bad_out = sorted(set(step.output_map) - member_outputs)
        if bad_in or bad_out:
            raise ConfigError(
                f"ensemble {ensemble.name!r}: step {member.name!r} maps unknown tensors "
                f"(inputs {bad_in}, outputs {bad_out}); {member.name!r} has inputs {sorted(member_inputs)} "
                f"and outputs {sorted(member_outputs)}"
            )
        required = {t.name for t in member.inputs if not t.optional}
        unfed = sorted(required - set(step.input_map))
        if unfed:
            raise ConfigError(f"ensemble {ensemble.name!r}: step {member.name!r} leaves inputs {unfed} unfed")
