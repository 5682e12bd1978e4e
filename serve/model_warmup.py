"""Triton `model_warmup` entries (run on every instance before a model is READY) and the tensor-type basics
that `model_config` shares with them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2 as pb

from engineforge.errors import ConfigError

DTYPES = frozenset(name for name in pb.DataType.keys() if name != "TYPE_INVALID")
# Tensor names (TEXT, INPUT_IDS...); model names follow engineforge.defaults.check_model_name.
_TENSOR_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Triton reads `input_data_file` from this folder of the model directory (beside config.pbtxt).
WARMUP_DIR = "warmup"
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_DTYPE_BYTES = {"TYPE_BOOL": 1, "TYPE_INT8": 1, "TYPE_UINT8": 1, "TYPE_INT16": 2, "TYPE_UINT16": 2, "TYPE_FP16": 2,
                "TYPE_BF16": 2, "TYPE_INT32": 4, "TYPE_UINT32": 4, "TYPE_FP32": 4, "TYPE_INT64": 8, "TYPE_UINT64": 8,
                "TYPE_FP64": 8}


def check_tensor_name(name: str) -> None:
    if not isinstance(name, str) or not _TENSOR_NAME.match(name):
        raise ConfigError(f"tensor name {name!r} is invalid; use letters, digits, '_', '-', '.' (no spaces or '/')")


@dataclass(frozen=True)
class WarmupInput:
    """One input of a warmup sample: dims exclude the batch dimension; exactly one data source.

    `file_data` is the content of `input_data_file` (raw row-major bytes; TYPE_STRING elements are a 4-byte
    little-endian length then the bytes); the publisher writes it to `warmup/<input_data_file>`."""

    dtype: str
    dims: tuple[int, ...]
    zero_data: bool = False
    random_data: bool = False
    input_data_file: str = ""
    file_data: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(self.dims))
        if self.dtype not in DTYPES:
            raise ConfigError(f"warmup input: unknown dtype {self.dtype!r}; use one of {sorted(DTYPES)}")
        if not self.dims or any(not isinstance(d, int) or d < 1 for d in self.dims):
            raise ConfigError(f"warmup input: dims {list(self.dims)} invalid; warmup needs fixed sizes >= 1 (no -1)")
        if sum((self.zero_data, self.random_data, bool(self.input_data_file))) != 1:
            raise ConfigError("warmup input: set exactly one of zero_data, random_data or input_data_file")
        if self.input_data_file and (not _FILE_NAME.match(self.input_data_file) or ".." in self.input_data_file):
            raise ConfigError(f"warmup input_data_file {self.input_data_file!r} must be a plain file name (it lives "
                              f"in the model's {WARMUP_DIR}/ folder); use letters, digits, '_', '-', '.'")
        if self.file_data is not None:
            if not self.input_data_file:
                raise ConfigError("warmup input: file_data needs input_data_file (the name it is written under)")
            expected = _DTYPE_BYTES.get(self.dtype)
            elements = 1
            for d in self.dims:
                elements *= d
            if expected is not None and len(self.file_data) != expected * elements:
                raise ConfigError(f"warmup file {self.input_data_file!r}: {len(self.file_data)} bytes, but "
                                  f"{self.dtype} x {list(self.dims)} needs {expected * elements}")


@dataclass(frozen=True)
class WarmupSample:
    """One `model_warmup` entry: Triton runs it `count` times on every instance before the model is READY,
    and a sample that fails fails the model's load (so it must be a valid request)."""

    name: str
    inputs: Mapping[str, WarmupInput]
    batch_size: int = 1
    count: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", dict(self.inputs))
        if not self.name or not _FILE_NAME.match(self.name):
            raise ConfigError(f"warmup sample name {self.name!r} is invalid; use letters, digits, '_', '-', '.'")
        if not self.inputs:
            raise ConfigError(f"warmup sample {self.name!r} has no inputs; give every required model input")
        for name in self.inputs:
            check_tensor_name(name)
        if self.batch_size < 1 or self.count < 1:
            raise ConfigError(f"warmup sample {self.name!r}: batch_size and count must be >= 1, "
                              f"got {self.batch_size} and {self.count}")

    def to_protobuf(self) -> pb.ModelWarmup:
        warmup = pb.ModelWarmup(name=self.name, batch_size=self.batch_size, count=self.count)
        for name in sorted(self.inputs):
            spec = self.inputs[name]
            entry = warmup.inputs[name]
            entry.data_type = pb.DataType.Value(spec.dtype)
            entry.dims.extend(spec.dims)
            if spec.zero_data:
                entry.zero_data = True
            elif spec.random_data:
                entry.random_data = True
            else:
                entry.input_data_file = spec.input_data_file
        return warmup
