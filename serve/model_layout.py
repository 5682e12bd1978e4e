"""The Triton models engineforge publishes for one build, and their tensor contracts.

For published name `clf`, version N (one more than any before) adds the models that belong to that version alone and
points the two entry points clients call at them: the ensembles `clf` (TEXT in) and `clf_engine` (token ids in), each
pinned to exactly `clf.vN.*`. The text layout is chosen at publish (`text_path`):

- "one-hop" (default): ONE model, `clf.vN.engine`, takes TEXT (and tokenizes it itself, with the bundle's tokenizer
  shipped beside the engine) or token ids; `clf` is one step TEXT -> `clf.vN.engine`. A text request pays one
  python-backend hop.
- "two-hop": `clf.vN.tokenizer` (text -> token ids) then `clf.vN.engine` (token ids -> outputs); the engine refuses
  token ids whose tokenizer was another version's (TOKENIZER_VERSION).

Every request is therefore answered by one version end to end, never a mix; switching versions is switching the
entry points, done by the supervisor once the new models are loaded (see supervisor.py). Every answer carries
`VERSION` (the publish version that produced it).

Kept apart from `repository.py` (which moves files) so the contract can be read and tested alone;
the client relies on the tensor names and the `labels` parameter defined here.
"""

from __future__ import annotations

import json
import re

from engineforge.engines import TOKEN_INPUTS, runtime_info
from engineforge.engines.engine_spec import EngineSpec
from engineforge.engines.request_limits import DEFAULT_LONG_TEXTS, derive_request_limits

from .model_config import (
    DynamicBatching,
    EnsembleStep,
    InstanceGroup,
    ModelConfig,
    TensorSpec,
    validate_ensemble,
)
from .serving_defaults import (
    DEFAULT_TEXT_PATH,
    TEXT_PATH_PARAMETER,
    WHY,
    ServingSettings,
    derive_serving_settings,
    engine_warmup,
    text_path_parameters,
    tokenizer_warmup,
)

ENGINE_SUFFIX = "_engine"  # the token-id entry point (an ensemble over the serving version's engine)
ROLES = ("tokenizer", "engine")  # the models a version may have (a one-hop version has the engine alone)
_MEMBER = re.compile(r"^(?P<model>.+)\.v(?P<version>[0-9]+)\.(?P<role>tokenizer|engine)$")
# Model config parameter holding the JSON list of label names (index = class id).
LABELS_PARAMETER = "labels"

TEXT = TensorSpec("TEXT", "TYPE_STRING", (1,))
LABEL = TensorSpec("LABEL", "TYPE_STRING", (1,))
LOGITS = TensorSpec("LOGITS", "TYPE_FP32", (-1,))
PROBABILITIES = TensorSpec("PROBABILITIES", "TYPE_FP32", (-1,))
EMBEDDING = TensorSpec("EMBEDDING", "TYPE_FP32", (-1,))  # [batch, embedding_dim]: embedding engines only
# Token classifiers: per-token logits [batch, seq, tags], entities (JSON per text: one list per aggregation
# strategy) and the per-token tags (JSON list per text).
TOKEN_LOGITS = TensorSpec("LOGITS", "TYPE_FP32", (-1, -1))
ENTITIES = TensorSpec("ENTITIES", "TYPE_STRING", (1,))
TOKEN_LABELS = TensorSpec("TOKEN_LABELS", "TYPE_STRING", (1,))
# Tokenizer output / engine input tensors, keyed by the Hugging Face input name they carry.
TOKEN_TENSOR_NAMES = {name: name.upper() for name in TOKEN_INPUTS}  # input_ids -> INPUT_IDS
TOKEN_TENSORS = tuple(TOKEN_TENSOR_NAMES.values())
# What a token classifier's tokenizer adds, so the engine can turn tags into character spans.
TOKEN_EXTRA_NAMES = {"offsets": "OFFSETS", "word_ids": "WORD_IDS"}
# Which publish produced an answer ("3"); the tokenizer's, fed to the engine, must equal the engine's own.
VERSION = TensorSpec("VERSION", "TYPE_STRING", (1,))
TOKENIZER_VERSION = TensorSpec("TOKENIZER_VERSION", "TYPE_STRING", (1,), optional=True)
TEXT_INPUT = TensorSpec("TEXT", "TYPE_STRING", (1,), optional=True)  # a one-hop engine's text form
# Config parameters naming the publish a version model belongs to.
PUBLISHED_MODEL, PUBLISHED_VERSION = "published_model", "published_version"


def engine_model_name(model_name: str) -> str:
    """The token-id entry point of a published model."""
    return model_name + ENGINE_SUFFIX


def version_model_name(model_name: str, version: int, role: str) -> str:
    """`clf.v3.tokenizer` / `clf.v3.engine`: the models of one published version."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: use one of {ROLES}")
    return f"{model_name}.v{version}.{role}"


def parse_version_model(name: str) -> tuple[str, int, str] | None:
    """(published name, version, role) of a version model's name; None for any other name."""
    match = _MEMBER.match(name)
    return (match["model"], int(match["version"]), match["role"]) if match else None


def published_version_of(model_config: dict, fallback: str) -> str:
    """The publish version a python model belongs to, from the model config JSON Triton hands `initialize`."""
    return str(model_config.get("parameters", {}).get(PUBLISHED_VERSION, {}).get("string_value", fallback))


def entry_model_names(model_name: str) -> tuple[str, str]:
    """The two models clients call: text in, and token ids in."""
    return model_name, engine_model_name(model_name)


def _token_inputs(optional: bool = False) -> tuple[TensorSpec, ...]:
    # Ragged batching lets the dynamic batcher group requests of different sequence lengths;
    # the engine model pads them itself (see engine_runtime.merge_requests). `optional`: a one-hop engine, whose
    # requests carry TEXT instead.
    return (
        TensorSpec("INPUT_IDS", "TYPE_INT64", (-1,), optional=optional, allow_ragged_batch=True),
        TensorSpec("ATTENTION_MASK", "TYPE_INT64", (-1,), optional=optional, allow_ragged_batch=True),
        TensorSpec("TOKEN_TYPE_IDS", "TYPE_INT64", (-1,), optional=True, allow_ragged_batch=True),
    )


def _token_extras() -> tuple[TensorSpec, ...]:
    """A token classifier's engine also takes the tokenizer's OFFSETS / WORD_IDS and the TEXT (for entity
    spans and the `first` / `max` strategies); all optional, so token ids alone still work."""
    return (
        TensorSpec("OFFSETS", "TYPE_INT64", (-1, 2), optional=True, allow_ragged_batch=True),
        TensorSpec("WORD_IDS", "TYPE_INT64", (-1,), optional=True, allow_ragged_batch=True),
        TensorSpec("TEXT", "TYPE_STRING", (1,), optional=True),
    )


def _with_batch_dim(tensor: TensorSpec) -> TensorSpec:
    """An entry point's tensor with the batch as its first, checked dim. With max_batch_size > 0 Triton keeps only 32
    bits of a request's batch dim and treats 0 as "no batch": a TEXT of shape [2^62, 1] holding one string reached
    the tokenizer as an ordinary [1, 1] request and was answered. With the batch an explicit dim (entry points
    max_batch_size 0), Triton checks the whole shape against the data and refuses it; the models behind them still
    batch dynamically."""
    return TensorSpec(tensor.name, tensor.dtype, (-1, *tensor.dims), optional=tensor.optional)


def build_model_configs(
    model_name: str,
    spec: EngineSpec,
    *,
    version: int,
    max_batch_size: int = 32,
    max_queue_delay_us: int | None = None,
    instances: int | None = None,
    settings: ServingSettings | None = None,
    measured_latency_ms: float | None = None,
    warmup: bool = True,
    change_id: str = "",
    long_texts: str = DEFAULT_LONG_TEXTS,
    text_path: str = DEFAULT_TEXT_PATH,
) -> dict[str, ModelConfig]:
    """Configs of version `version`'s models ("engine", and "tokenizer" with text_path "two-hop") and of the entry
    points pinned to them ("ensemble": TEXT in, "ids": token ids in); raises ConfigError with the fix if inconsistent.

    Queue delay and instance count left as None are derived (serving_defaults.derive_serving_settings); a full
    `settings` (e.g. the winner of `engineforge tune`) replaces the derivation. `change_id` marks the publish or
    rollback that wrote the entry points, so the supervisor can report on exactly that change.
    """
    if settings is None:
        settings = derive_serving_settings(spec, max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                                           instances=instances, measured_latency_ms=measured_latency_ms, warmup=warmup)
    # Per-request limits (request_limits.py), recorded with their reasons on every model; `long_texts`: "truncate"
    # or "refuse" texts over the limits.
    limits = derive_request_limits(spec, max_batch_size=settings.max_batch_size, long_texts=long_texts).parameters()
    published = {PUBLISHED_MODEL: model_name, PUBLISHED_VERSION: str(version)}
    layout = text_path_parameters(text_path)  # recorded, with its reason, on the engine and both entry points
    engine = _engine_config(model_name, spec, version, settings, published | layout, limits)
    tokenizer = _tokenizer_config(model_name, spec, version, settings, published | limits) \
        if text_path == "two-hop" else None
    entry = {LABELS_PARAMETER: json.dumps(list(spec.labels)), "build_id": spec.build_id, "change_id": change_id}
    entry |= _task_parameters(spec) | published | limits | layout
    ensemble, ids = _entry_configs(model_name, spec, version, tokenizer, engine, entry)
    validate_ensemble(ensemble, [engine] if tokenizer is None else [tokenizer, engine])
    validate_ensemble(ids, [engine])
    return {"engine": engine, "ensemble": ensemble, "ids": ids} | ({"tokenizer": tokenizer} if tokenizer else {})


def _outputs(spec: EngineSpec) -> tuple[TensorSpec, ...]:
    return ((EMBEDDING,) if spec.is_embedding else (TOKEN_LOGITS, ENTITIES, TOKEN_LABELS) if spec.is_token_task
            else (LOGITS, PROBABILITIES, LABEL))


def _task_parameters(spec: EngineSpec) -> dict[str, str]:
    return {"task": spec.task} | ({"embedding_dim": str(spec.embedding_dim)} if spec.is_embedding else {})


def _engine_config(model_name: str, spec: EngineSpec, version: int, settings: ServingSettings,
                   published: dict[str, str], limits: dict[str, str]) -> ModelConfig:
    """The python-backend engine model: token ids (and a token classifier's extras) in, the task's outputs out; a
    one-hop engine also takes TEXT instead of token ids (a request carries one form or the other)."""
    one_hop = published.get(TEXT_PATH_PARAMETER) == "one-hop"
    extra_in = _token_extras() if spec.is_token_task else ((TEXT_INPUT,) if one_hop else ())
    warmup = engine_warmup(spec, settings.max_batch_size) + (tokenizer_warmup() if one_hop else ())
    return ModelConfig(
        name=version_model_name(model_name, version, "engine"),
        backend="python",
        max_batch_size=settings.max_batch_size,
        inputs=_token_inputs(optional=one_hop) + extra_in + (TOKENIZER_VERSION,),
        outputs=(*_outputs(spec), VERSION),
        dynamic_batching=DynamicBatching(preferred_batch_sizes=settings.preferred_batch_sizes,
                                         max_queue_delay_us=settings.max_queue_delay_us),
        # A GPU runtime's instances are GPU instances: Triton places one group per GPU and tells the stub which.
        instance_group=InstanceGroup(count=settings.instances, kind=runtime_info(spec.runtime).device),
        parameters={
            LABELS_PARAMETER: json.dumps(list(spec.labels)),
            "build_id": spec.build_id,
            "precision": spec.precision,
            "runtime": spec.runtime,
            "max_sequence_length": str(spec.max_sequence_length),
            "max_position_embeddings": str(spec.max_position_embeddings),
        } | _task_parameters(spec) | ({"vocab_size": str(spec.vocab_size)} if spec.vocab_size else {})
        | published | settings.parameters() | limits,
        model_warmup=warmup if settings.warmup else (),
        versions=(version,),
    )


def _tokenizer_config(model_name: str, spec: EngineSpec, version: int, settings: ServingSettings,
                      shared: dict[str, str]) -> ModelConfig:
    extra_out = tuple(TensorSpec(t.name, t.dtype, t.dims) for t in _token_extras() if t.name != "TEXT")
    return ModelConfig(
        name=version_model_name(model_name, version, "tokenizer"),
        backend="python",
        max_batch_size=settings.max_batch_size,
        inputs=(TEXT,),
        outputs=tuple(TensorSpec(name, "TYPE_INT64", (-1,)) for name in TOKEN_TENSORS)
        + (extra_out if spec.is_token_task else ()) + (VERSION,),
        # No queue delay: tokenizing is cheap, batching only saves stub round trips here.
        dynamic_batching=DynamicBatching(max_queue_delay_us=0),
        instance_group=InstanceGroup(count=settings.instances, kind="CPU"),
        parameters={"max_sequence_length": str(spec.max_sequence_length)} | shared,
        model_warmup=tokenizer_warmup() if settings.warmup else (),
        versions=(version,),
    )


def _entry_configs(model_name: str, spec: EngineSpec, version: int, tokenizer: ModelConfig | None,
                   engine: ModelConfig, entry: dict[str, str]) -> tuple[ModelConfig, ModelConfig]:
    """The two entry points pinned to this version: TEXT in (the engine alone, or tokenizer then engine), and token
    ids in."""
    outputs = _outputs(spec)
    answer = {t.name: t.name for t in (*outputs, VERSION)}
    ensemble = ModelConfig(
        name=model_name,
        platform="ensemble",
        max_batch_size=0,  # the batch is an explicit dim of each tensor: see _with_batch_dim
        inputs=(_with_batch_dim(TEXT),),
        outputs=tuple(_with_batch_dim(t) for t in (*outputs[::-1], VERSION)),
        parameters=entry,
        ensemble_steps=(EnsembleStep(engine.name, input_map={"TEXT": "TEXT"}, output_map=answer,
                                     model_version=version),) if tokenizer is None
        else _two_hop_steps(spec, version, tokenizer, engine, answer),
        versions=(version,),
    )
    id_inputs = tuple(_with_batch_dim(t) for t in _token_inputs() + (_token_extras() if spec.is_token_task else ()))
    ids = ModelConfig(
        name=engine_model_name(model_name),
        platform="ensemble",
        max_batch_size=0,
        inputs=id_inputs,
        outputs=tuple(_with_batch_dim(t) for t in (*outputs, VERSION)),
        # Clients of the token-id path read the engine's own facts (labels, vocabulary, sequence limit) here.
        parameters={k: v for k, v in engine.parameters.items() if not k.startswith(WHY)} | entry,
        ensemble_steps=(EnsembleStep(engine.name, input_map={t.name: t.name for t in id_inputs}, output_map=answer,
                                     model_version=version),),
        versions=(version,),
    )
    return ensemble, ids


def _two_hop_steps(spec: EngineSpec, version: int, tokenizer: ModelConfig, engine: ModelConfig,
                   answer: dict[str, str]) -> tuple[EnsembleStep, ...]:
    token_map = {name: name.lower() for name in TOKEN_TENSORS}
    if spec.is_token_task:
        token_map |= {name: name.lower() for name in TOKEN_EXTRA_NAMES.values()}
    return (
        EnsembleStep(tokenizer.name, input_map={"TEXT": "TEXT"},
                     output_map=token_map | {"VERSION": "tokenizer_version"}, model_version=version),
        EnsembleStep(
            engine.name,
            input_map=token_map | {"TOKENIZER_VERSION": "tokenizer_version"}
            | ({"TEXT": "TEXT"} if spec.is_token_task else {}),
            output_map=answer,
            model_version=version,
        ),
    )
