"""The typed state one build hands from step to step."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engineforge.data import Example, eval_label_ids
from engineforge.engines.engine_spec import EMBEDDINGS, TOKEN_CLASSIFICATION
from engineforge.engines.registry import REFERENCE_RUNTIME
from engineforge.engines.traffic import TrafficProfile
from engineforge.errors import ConfigError

from .accuracy import Budget, Comparison, compare_logits
from .checkpoint import CheckpointInfo
from .config import STAGE_EXPORT, BuildConfig
from .embedding_quality import EmbeddingComparison, compare_embeddings
from .report import StepRecord
from .token_quality import TokenComparison, compare_tokens, text_offsets


@dataclass(frozen=True)
class AttentionShape:
    """Heads and width ONNX Runtime's Attention fusion needs; prune updates it for the graph_optimize step."""

    num_heads: int
    hidden_size: int


@dataclass
class BuildContext:
    """Mutable state of one build. Steps read it and return what they made (step_output.StepOutput), which
    pipeline.run_step checks against their declared artefacts and writes here; nothing else writes it but the
    runner (data, bundle) and validate (its measurement, kept for a failed build's report)."""

    config: BuildConfig
    work_dir: Path
    checkpoint: CheckpointInfo
    build_id: str
    reference_model: Any  # fp32 torch model, never modified
    tokenizer: Any
    model: Any  # the torch model torch-level steps (prune, distill, bnb_4bit) transform
    attention: AttentionShape
    budget: Budget = field(default_factory=Budget)  # from the build's validate step; static_int8 and
    budget_max_examples: int | None = None  # select_runtime judge candidates by the same budget
    eval_examples: list[Example] = field(default_factory=list)
    train_examples: list[Example] = field(default_factory=list)
    calibration_examples: list[Example] = field(default_factory=list)
    unlabelled_examples: list[Example] = field(default_factory=list)  # text only: labels are dropped on load
    # The token lengths this build will serve (build/traffic_profile.py): runtimes are timed on them. None only
    # for a build given no texts at all.
    traffic_profile: TrafficProfile | None = None
    onnx_path: Path | None = None  # the current ONNX graph; each ONNX step replaces it
    plain_onnx_path: Path | None = None  # the unfused export, which static_int8 quantizes
    engine_dir: Path | None = None  # torch-bnb: the save_pretrained directory the bundle ships
    plan_path: Path | None = None  # tensorrt: the serialized plan the bundle ships
    compiled_onnx_path: Path | None = None  # tensorrt: the exact ONNX handed to TensorRT (validated without a GPU)
    tensorrt_metadata: dict[str, Any] | None = None  # tensorrt: engine.json's "tensorrt" section
    precision: str = "fp32"
    runtime: str = REFERENCE_RUNTIME  # the runtime that serves the engine
    records: list[StepRecord] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    bundle_dir: Path | None = None
    published: dict[str, Any] | None = None
    # Set by plan_serving: the engine is opened (validated, timed, served) padded to these lengths with these
    # threads; None threads = config.intra_op_threads.
    length_buckets: tuple[int, ...] = ()
    bucket_max_batch: int = 0  # plan_serving: calls of more rows run unpadded (0 = every call is padded)
    intra_op_threads: int | None = None
    serving_plan: dict[str, Any] | None = None
    _reference_logits: dict[tuple[Any, ...], np.ndarray] = field(default_factory=dict, repr=False)
    _offsets: dict[tuple[str, ...], list[np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, config: BuildConfig, work_dir: Path, checkpoint: CheckpointInfo, model: Any, tokenizer: Any,
              build_id: str = "") -> BuildContext:
        """A context for a freshly loaded checkpoint. Torch-level steps change the model, so they get a copy:
        the fp32 reference must stay intact."""
        changes_torch_model = any(s.stage < STAGE_EXPORT for s in config.steps)
        return cls(config=config, work_dir=work_dir, checkpoint=checkpoint, build_id=build_id,
                   reference_model=model, tokenizer=tokenizer,
                   model=copy.deepcopy(model) if changes_torch_model else model,
                   attention=AttentionShape(checkpoint.num_heads, checkpoint.hidden_size))

    @property
    def labels(self) -> list[str]:
        return list(self.checkpoint.labels)

    @property
    def vocab_size(self) -> int:
        """Token ids the model accepts (timing inputs are drawn from them)."""
        return self.checkpoint.vocab_size or len(self.tokenizer)

    def label_ids(self, examples: Sequence[Example]) -> list[int] | None:
        return eval_label_ids(examples, self.checkpoint.labels)

    @property
    def is_embedding(self) -> bool:
        return self.checkpoint.task == EMBEDDINGS

    @property
    def is_token_task(self) -> bool:
        return self.checkpoint.task == TOKEN_CLASSIFICATION

    @property
    def entity_types(self) -> list[str]:
        """A token classifier's entity types (its IOB2 tags without B-/I-)."""
        from engineforge.ner import entity_types

        return entity_types(self.labels)

    def eval_texts(self, examples: Sequence[Example]) -> list[str]:
        """The texts whose outputs judge an engine. Embeddings: examples with a `positive` first, then the
        others, then those positives (what `compare` expects)."""
        if not self.is_embedding:
            return [e.text for e in examples]
        paired = [e for e in examples if e.positive]
        return [e.text for e in paired] + [e.text for e in examples if not e.positive] + [e.positive for e in paired]

    def compare(self, reference: np.ndarray, outputs: np.ndarray, examples: Sequence[Example],
                texts: Sequence[str] | None = None) -> Comparison | EmbeddingComparison | TokenComparison:
        """Engine outputs vs the fp32 reference's on `eval_texts(examples)`, by the task's measure."""
        if self.is_token_task:
            texts = [e.text for e in examples]
            key = tuple(texts)  # the int8 fallback compares dozens of trials on the same texts: tokenize once
            if key not in self._offsets:
                self._offsets[key] = text_offsets(self.tokenizer, texts, self.config.max_sequence_length)
            offsets = self._offsets[key]
            return compare_tokens(reference, outputs, offsets, self.labels, [e.entities for e in examples], texts)
        if self.is_embedding:
            return compare_embeddings(reference, outputs, len(examples), texts)
        return compare_logits(reference, outputs, self.label_ids(examples), texts)

    def budget_examples(self) -> list[Example]:
        """The eval examples the validate step judges (all, or its max_examples)."""
        limit = self.budget_max_examples
        return list(self.eval_examples[:limit] if limit else self.eval_examples)

    def engine_source(self) -> tuple[Path, str] | None:
        """(engine file or directory, its name in the bundle); None while no step has made an engine."""
        from engineforge.engines import registry

        info = registry.runtime_info(self.runtime)  # runtimes that read neither a directory nor a plan read ONNX
        path = {registry.MODEL_DIRECTORY: self.engine_dir, registry.MODEL_PLAN: self.plan_path}.get(
            info.model_kind, self.onnx_path)
        return (path, info.bundle_file) if path is not None else None

    @property
    def serving_threads(self) -> int:
        return self.config.intra_op_threads if self.intra_op_threads is None else self.intra_op_threads

    def open_engine(self, runtime: str | None = None, *, length_buckets: Sequence[int] | None = None,
                    threads: int | None = None, bucket_max_batch: int | None = None) -> Any:
        """The current engine in `runtime` (default: the one that will serve it), opened exactly as the engine
        model in Triton opens it (length buckets and threads from plan_serving, unless given): validation and
        runtime selection measure what is served."""
        from engineforge.engines import load_engine

        source = self.engine_source() if runtime is None else (self.onnx_path, "")  # candidates read the graph
        if source is None or source[0] is None:
            raise ConfigError("no step has produced an engine yet: add 'export' (or 'bnb_4bit') to the recipe")
        buckets = self.length_buckets if length_buckets is None else tuple(length_buckets)
        return load_engine(source[0], runtime or self.runtime, self.serving_threads if threads is None else threads,
                           length_buckets=buckets,
                           bucket_max_batch=self.bucket_max_batch if bucket_max_batch is None else bucket_max_batch)

    def reference_logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """fp32 reference model logits, computed once per text list: static_int8's fallback, select_runtime
        and validate all judge against the same eval texts, and the reference model never changes."""
        key = (tuple(texts), batch_size)
        if key not in self._reference_logits:
            from engineforge.engines import TorchEngine, engine_logits, model_input_names

            reference = TorchEngine(self.reference_model, model_input_names(self.tokenizer))
            self._reference_logits[key] = engine_logits(reference, self.tokenizer, texts,
                                                        self.config.max_sequence_length, batch_size)
        return self._reference_logits[key]
