"""Causal-LM checkpoints: which families engineforge builds, with which runtimes, and how an input is read.

An input is a Hugging Face `*ForCausalLM` (or `GPT2LMHeadModel`) directory, or a `.gguf` file. A GGUF file is
dequantized to fp32 by transformers (through the `gguf` package) and saved as a Hugging Face directory in the build's
work dir, so every later step (builders, the reference torch engine, quality checks) reads one layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge.errors import CheckpointError, ConfigError, UnsupportedArchitectureError

from .gguf_blocks import record_source

# ORT: the model builder's graph run by ONNX Runtime with engineforge's continuous batching (the default);
# ORTGENAI: the same graph served by ONNX Runtime GenAI's og.Engine; OVGENAI: a stateful OpenVINO IR served by
# OpenVINO GenAI's continuous-batching pipeline.
TORCH, ORT, ORTGENAI, OVGENAI = "torch", "onnxruntime", "onnxruntime-genai", "openvino-genai"
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
GGUF_DIR = "hf-from-gguf"


@dataclass(frozen=True)
class LMFamily:
    name: str
    model_types: tuple[str, ...]
    runtimes: tuple[str, ...]  # runtimes whose builder can build this family
    refusals: tuple[tuple[str, str], ...] = ()  # (runtime, why it cannot build this family)

    def why_not(self, runtime: str) -> str:
        """"" when `runtime` builds this family, else the reason."""
        if runtime in self.runtimes:
            return ""
        reason = dict(self.refusals).get(runtime, f"the {runtime} runtime has no builder for {self.name}")
        return f"{self.name}: {reason}; runtimes that build it: {', '.join(self.runtimes)}"


_NO_GPT2 = ("onnxruntime-genai's model builder has no GPT-2 exporter (it raises NotImplementedError "
            "'model is not currently supported')")
LM_FAMILIES = (
    LMFamily("llama", ("llama",), (TORCH, ORT, ORTGENAI, OVGENAI)),
    LMFamily("qwen2", ("qwen2",), (TORCH, ORT, ORTGENAI, OVGENAI)),
    LMFamily("mistral", ("mistral",), (TORCH, ORT, ORTGENAI, OVGENAI)),
    LMFamily("phi3", ("phi3",), (TORCH, ORT, ORTGENAI, OVGENAI)),
    LMFamily("gpt2", ("gpt2",), (TORCH, OVGENAI), refusals=((ORT, _NO_GPT2), (ORTGENAI, _NO_GPT2))),
)
LM_MODEL_TYPES = tuple(t for f in LM_FAMILIES for t in f.model_types)


def context_length(config: dict[str, Any], default: int = 2048) -> int:
    """Positions a checkpoint's config declares (GPT-2 names them n_positions), else `default`."""
    return int(config.get("max_position_embeddings") or config.get("n_positions") or default)


def family_runtime_reason(family: str, runtime: str) -> str:
    """"" when `runtime`'s builder builds `family` (a family name or model_type), else the reason."""
    for record in LM_FAMILIES:
        if family == record.name or family in record.model_types:
            return record.why_not(runtime)
    return f"{family!r} is not a causal-LM family engineforge builds"


@dataclass(frozen=True)
class LMCheckpoint:
    hf_dir: Path  # a Hugging Face directory (the dequantized copy for a GGUF input)
    family: LMFamily
    model_type: str
    config: dict[str, Any]
    source: str  # "hf" or "gguf"
    given: Path | None = None  # the path the caller passed (a .gguf file, or the directory itself)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.given or self.hf_dir), "hf_dir": str(self.hf_dir), "family": self.family.name,
                "model_type": self.model_type, "source": self.source,
                "architecture": (self.config.get("architectures") or ["?"])[0]}

    @property
    def max_positions(self) -> int:
        return context_length(self.config, default=0)


def lm_family(model_type: str | None, where: str = "config.json") -> LMFamily:
    for family in LM_FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedArchitectureError(
        f"{where}: model_type {model_type!r} is not a causal-LM family engineforge builds; supported: "
        f"{', '.join(LM_MODEL_TYPES)}")


def is_causal_lm(path: Path) -> bool:
    """True for a `.gguf` file or a directory whose config.json names a `*ForCausalLM`/`*LMHeadModel` (task
    detection: never raises)."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":  # even a missing one: the LM build then says it is missing
        return True
    if path.is_file():
        return False
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    architectures = config.get("architectures") if isinstance(config, dict) else None
    return any(str(a).endswith(CAUSAL_SUFFIXES) for a in architectures or ())


def read_lm_checkpoint(path: Path, work_dir: Path | None = None) -> LMCheckpoint:
    """Check (and for GGUF, convert) a causal-LM input; every problem is a CheckpointError naming the fix."""
    path = given = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: pass a Hugging Face causal-LM directory or a "
                              ".gguf file")
    source = "hf"
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise CheckpointError(f"checkpoint {path} is a file but not a .gguf: pass the directory that holds "
                                  "config.json, or a GGUF file")
        if work_dir is None:
            raise ConfigError(f"reading {path} needs a work dir to save its dequantized Hugging Face copy in")
        path, source = gguf_to_hf(path, Path(work_dir) / GGUF_DIR), "gguf"
    config = _read_config(path)
    model_type = config.get("model_type")
    _refuse_non_causal(path, config)
    family = lm_family(model_type, str(path / "config.json"))
    _check_files(path)
    return LMCheckpoint(path, family, str(model_type), config, source, given)


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} is not a Hugging Face checkpoint: it has no config.json (pass the directory "
                              "save_pretrained wrote)")
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_file} is not valid JSON ({exc}): the checkpoint is corrupt; re-save it") \
            from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file} does not hold a JSON object: the checkpoint is corrupt; re-save it")
    return config


def _refuse_non_causal(path: Path, config: dict[str, Any]) -> None:
    """An encoder (or an LM with a classification head) sent to the LM path gets the build that fits it."""
    architectures = [str(a) for a in config.get("architectures") or ()]
    if architectures and not any(a.endswith(CAUSAL_SUFFIXES) for a in architectures):
        raise UnsupportedArchitectureError(
            f"{path} is a {', '.join(architectures)} checkpoint, not a causal LM (*ForCausalLM): build it with "
            "--task text-classification, token-classification or embeddings, or pass a *ForCausalLM checkpoint")
    if not architectures and config.get("model_type") not in LM_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"{path}: model_type {config.get('model_type')!r} with no architectures is not a causal LM; "
            f"supported causal-LM model types: {', '.join(LM_MODEL_TYPES)}")


def _check_files(path: Path) -> None:
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{path} has no weights: expected one of {', '.join(WEIGHT_FILES)} (save the model "
                              "with save_pretrained)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): save the tokenizer "
                              "with the model (tokenizer.save_pretrained(dir))")
    for weights in sorted(path.glob("*.safetensors")):
        _check_safetensors(weights)


def _check_safetensors(weights: Path) -> None:
    """Open the header: safetensors checks that it parses and that its tensors cover the file exactly, so a
    truncated or garbled file fails here, with its name, and not halfway through a build."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="np") as handle:
            handle.keys()
    except Exception as exc:  # safetensors raises its own error types for garbled headers
        raise CheckpointError(f"{weights} is corrupt ({type(exc).__name__}: {exc}); re-save the checkpoint with "
                              "save_pretrained") from exc


def gguf_to_hf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file to an fp32 Hugging Face directory (model + tokenizer) at `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the build prints its own progress lines
    out_dir = Path(out_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                     dtype="float32")
    except Exception as exc:  # transformers raises ValueError/KeyError/RuntimeError for unsupported or bad files
        raise CheckpointError(
            f"could not read GGUF file {gguf_file}: {type(exc).__name__}: {exc}. transformers reads GGUF for "
            f"architectures {', '.join(LM_MODEL_TYPES[:-1])} (llama.cpp naming); convert other files to a Hugging "
            "Face directory first") from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    _plain_copy(model).save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    record_source(out_dir, gguf_file)  # the gguf int4 method reads the file's own blocks
    return out_dir


def _plain_copy(model: Any) -> Any:
    """transformers marks a model read from GGUF as gguf-quantized and refuses to save it, though its weights are
    already dequantized fp32: the same weights in a model made from the config without the quantization record."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype="float32")
    plain.load_state_dict(model.state_dict())
    return plain.eval()
