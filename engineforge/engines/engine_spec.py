"""`engine.json`: the contract between the build pipeline (writer) and the serving side (reader).

The build pipeline constructs an `EngineSpec` in Python and calls `save(bundle_dir)`; serving calls
`EngineSpec.load(bundle_dir)`. Validation happens on construction, so a bad spec is rejected where it
is made, with a message naming the file (when known) and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engineforge.errors import ConfigError, EngineLoadError
from engineforge.file_modes import atomic_write

from .registry import (
    MODEL_DIRECTORY,
    REFERENCE_RUNTIME,
    REQUIRED_TOKEN_INPUTS,
    TOKEN_INPUTS,
    load_plugin,
    runtime_info,
    runtime_names,
)
from .traffic import check_length_buckets

ENGINE_SPEC_FILENAME = "engine.json"
FORMAT_VERSION = 1
TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, EMBEDDINGS = "text-classification", "token-classification", "embeddings"
TASKS = (TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, EMBEDDINGS)


@dataclass(frozen=True)
class EngineSpec:
    """Everything serving needs to know about an engine bundle besides the model file itself.

    A classifier needs `labels`; an embedding engine (task "embeddings") has none and declares `embedding_dim`.
    The defaults match a standard BERT classifier export. Lists are accepted
    wherever tuples are stored. Unknown keys read from a newer writer are kept in `extra`.
    """

    labels: tuple[str, ...] = ()
    model_file: str = "model.onnx"
    input_names: tuple[str, ...] = TOKEN_INPUTS
    output_name: str = "logits"
    max_sequence_length: int = 128
    max_position_embeddings: int = 512
    precision: str = "fp32"
    intra_op_threads: int = 2
    source_checkpoint: str = ""
    build_id: str = ""
    runtime: str = REFERENCE_RUNTIME
    # Optional: when known, token ids outside [0, vocab_size) are rejected before they reach the model.
    vocab_size: int | None = None
    # Optional likewise: token_type_ids outside [0, type_vocab_size) are rejected.
    type_vocab_size: int | None = None
    # TensorRT engines: flavour, version, GPU targets, profiles, I/O, hashes (engineforge.engines.tensorrt_engine).
    tensorrt: Mapping[str, Any] | None = field(default=None, hash=False)
    task: str = TEXT_CLASSIFICATION
    # Embeddings: the width of one embedding, and how the graph pools ({"mode": "mean", "normalize": true}).
    embedding_dim: int | None = None
    pooling: Mapping[str, Any] | None = field(default=None, hash=False)
    # "module:function" registering a runtime from outside engineforge (registry.Runtime.plugin); "" otherwise.
    runtime_plugin: str = ""
    # The token lengths of the texts the build was given (traffic.TrafficProfile.to_dict()): what it was timed on.
    traffic_profile: Mapping[str, Any] | None = field(default=None, hash=False)
    # Sequence lengths a batch is padded up to (e.g. 16, 32, 64, 128), chosen by measurement; () = no padding.
    length_buckets: tuple[int, ...] = ()
    # Calls of up to this many rows are padded to the buckets, larger ones run unpadded (0 = every call): buckets
    # pay at batch 1, where a shape change costs most of a call, and may not at the batches formed under load.
    bucket_max_batch: int = 0
    # Threads per instance and instances, measured on the profile, with the reason (build's plan_serving step).
    serving_plan: Mapping[str, Any] | None = field(default=None, hash=False)
    format_version: int = FORMAT_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # Where the spec was read from, for error messages; not serialized.
    source: str = field(default="<EngineSpec>", compare=False, repr=False)

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so the frozen object is really immutable and comparable.
        for name in ("labels", "input_names", "length_buckets"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Sequence):
                self._fail(name, f"must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "extra", dict(self.extra))
        self._validate()

    def _fail(self, name: str, problem: str) -> None:
        raise ConfigError(f"{self.source}: field '{name}' {problem}")

    def _validate(self) -> None:
        self._check_format_and_runtime()
        self._check_strings()
        self._check_task_and_labels()
        self._check_inputs()
        self._check_sizes()
        clash = set(self.extra) & {f.name for f in fields(self)}
        if clash:
            self._fail("extra", f"repeats declared fields {sorted(clash)}")

    def _check_format_and_runtime(self) -> None:
        if self.format_version != FORMAT_VERSION:
            self._fail(
                "format_version",
                f"is {self.format_version!r} but this engineforge reads version {FORMAT_VERSION}; "
                "rebuild the engine with a matching engineforge",
            )
        if self.runtime_plugin and self.runtime not in runtime_names():
            try:  # a runtime from outside engineforge: its plugin registers it (e.g. in the Triton stub)
                load_plugin(self.runtime_plugin, self.runtime)
            except EngineLoadError as exc:
                self._fail("runtime_plugin", str(exc))
        if self.runtime not in runtime_names():
            self._fail(
                "runtime",
                f"is {self.runtime!r}; servable runtimes are {', '.join(map(repr, runtime_names()))} "
                "(rebuild the engine for one of them)",
            )
        info = runtime_info(self.runtime)
        if not self.runtime_plugin:  # recorded so a process that has not registered the runtime can
            object.__setattr__(self, "runtime_plugin", info.plugin)
        # TensorRT engines carry their metadata in the `tensorrt` field, exactly they.
        if (info.spec_metadata == "tensorrt") != isinstance(self.tensorrt, Mapping):
            self._fail("tensorrt", f"must be the TensorRT metadata object exactly when the runtime ({self.runtime!r}) "
                       "runs TensorRT plans (rebuild the engine with engineforge's compile step)")

    def _check_strings(self) -> None:
        for name in ("model_file", "output_name", "precision"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                self._fail(name, f"must be a non-empty string, got {value!r}")
        if os.path.isabs(self.model_file) or ".." in Path(self.model_file).parts:
            self._fail("model_file", f"must be a path inside the bundle, got {self.model_file!r}")
        for name in ("source_checkpoint", "build_id"):
            if not isinstance(getattr(self, name), str):
                self._fail(name, f"must be a string, got {getattr(self, name)!r}")

    def _check_task_and_labels(self) -> None:
        if self.task not in TASKS:
            self._fail("task", f"is {self.task!r}; this engineforge serves {', '.join(TASKS)}")
        if self.task == EMBEDDINGS:
            if self.labels:
                self._fail("labels", "must be empty for an embedding engine (it has no classes)")
            if self.embedding_dim is None:
                self._fail("embedding_dim", "is missing; an embedding engine declares its embedding width")
            self._check_int("embedding_dim", minimum=1)
        elif not self.labels:
            self._fail("labels", "is empty; list one label per class id")
        if not all(isinstance(label, str) and label for label in self.labels):
            self._fail("labels", f"must all be non-empty strings, got {list(self.labels)!r}")
        if len(set(self.labels)) != len(self.labels):
            self._fail("labels", f"has duplicates: {list(self.labels)!r}")

    def _check_inputs(self) -> None:
        unknown = [n for n in self.input_names if n not in TOKEN_INPUTS]
        missing = [n for n in REQUIRED_TOKEN_INPUTS if n not in self.input_names]
        if unknown or missing or len(set(self.input_names)) != len(self.input_names):
            self._fail(
                "input_names",
                f"is {list(self.input_names)!r}; it must contain input_ids and attention_mask, "
                f"optionally token_type_ids, each once",
            )

    def _check_sizes(self) -> None:
        self._check_int("max_position_embeddings", minimum=1)
        self._check_int("max_sequence_length", minimum=1)
        self._check_int("intra_op_threads", minimum=0)
        self._check_int("bucket_max_batch", minimum=0)
        for name in ("vocab_size", "type_vocab_size"):
            if getattr(self, name) is not None:
                self._check_int(name, minimum=1)
        if problem := check_length_buckets(self.length_buckets, self.max_sequence_length):
            self._fail("length_buckets", problem)
        if self.max_sequence_length > self.max_position_embeddings:
            self._fail(
                "max_sequence_length",
                f"({self.max_sequence_length}) exceeds max_position_embeddings "
                f"({self.max_position_embeddings}); lower it",
            )

    def _check_int(self, name: str, *, minimum: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self._fail(name, f"must be an integer >= {minimum}, got {value!r}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def model_is_directory(self) -> bool:
        """True when model_file is a directory (e.g. torch-bnb's `model/`), False for a single file."""
        return runtime_info(self.runtime).model_kind == MODEL_DIRECTORY

    @property
    def max_request_tokens(self) -> int:
        """Longest token sequence a request may carry: the model's positions, or a TensorRT profile's max."""
        if self.tensorrt is None:
            return self.max_position_embeddings
        profile_max = min(int(s["max"][1]) for s in self.tensorrt["profiles"][0].values())
        return min(profile_max, self.max_position_embeddings)

    @property
    def is_embedding(self) -> bool:
        return self.task == EMBEDDINGS

    @property
    def is_token_task(self) -> bool:
        return self.task == TOKEN_CLASSIFICATION

    @property
    def uses_token_type_ids(self) -> bool:
        return "token_type_ids" in self.input_names

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format_version": self.format_version, "runtime": self.runtime}
        for f in fields(self):
            if f.name in ("extra", "source", "format_version", "runtime"):
                continue
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        for optional in ("vocab_size", "type_vocab_size", "tensorrt", "embedding_dim", "pooling", "runtime_plugin",
                         "traffic_profile", "length_buckets", "bucket_max_batch", "serving_plan"):
            if data[optional] in (None, "", [], 0):
                del data[optional]
        data.update(self.extra)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> EngineSpec:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        declared = {f.name for f in fields(cls)} - {"extra", "source"}
        if "labels" not in data and data.get("task", TEXT_CLASSIFICATION) == TEXT_CLASSIFICATION:
            raise ConfigError(f"{source}: field 'labels' is missing; list one label per class id")
        known = {k: v for k, v in data.items() if k in declared}
        extra = {k: v for k, v in data.items() if k not in declared}
        try:
            return cls(**known, extra=extra, source=source)
        except TypeError as exc:  # e.g. labels given as a number
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EngineSpec:
        """Read `engine.json`, given either the file or the bundle directory holding it."""
        path = Path(path)
        if path.is_dir():
            path = path / ENGINE_SPEC_FILENAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: not found; an engine bundle must contain {ENGINE_SPEC_FILENAME}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read ({exc})") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write `engine.json` (into `path` if it is a directory) atomically; returns the file path."""
        path = Path(path)
        if path.is_dir():
            path = path / ENGINE_SPEC_FILENAME
        return atomic_write(path, self.to_json())
