"""Reading a causal-LM checkpoint: a Hugging Face `*ForCausalLM` directory, or a `.gguf` file (converted to one,
because every LM builder starts from a Hugging Face directory).

Minimal version written for the LM build; the LM checkpoint owner's module keeps this API:
`read_lm_checkpoint(path) -> LMCheckpoint(hf_dir, family, model_type, config, source)` and `is_causal_lm(path)`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge.errors import CheckpointError, UnsupportedArchitectureError

_CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class LMCheckpoint:
    hf_dir: Path  # a Hugging Face directory the builders read (for a .gguf: the converted copy)
    family: str  # what builders decide by (the model_type)
    model_type: str
    config: dict[str, Any]
    source: Path  # what the caller gave

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.source), "hf_dir": str(self.hf_dir), "family": self.family,
                "model_type": self.model_type, "architecture": (self.config.get("architectures") or ["?"])[0]}


def _config(path: Path) -> dict[str, Any] | None:
    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is not valid JSON ({exc}): the checkpoint is corrupt; re-save it") from exc
    return config if isinstance(config, dict) else None


def is_causal_lm(path: Path) -> bool:
    """True for a `.gguf` file or a directory whose config names a `*ForCausalLM` / `*LMHeadModel` architecture."""
    path = Path(path)
    if path.suffix == ".gguf":
        return True
    try:
        config = _config(path) if path.is_dir() else None
    except CheckpointError:  # not readable: whichever build is chosen reports it
        return False
    architectures = (config or {}).get("architectures") or []
    return any(str(a).endswith(_CAUSAL_HEADS) for a in architectures)


def read_lm_checkpoint(path: Path, work_dir: Path | None = None) -> LMCheckpoint:
    """The checkpoint at `path`, checked without loading weights (a .gguf is converted into `work_dir`)."""
    source = Path(path)
    if not source.exists():
        raise CheckpointError(f"checkpoint {source} does not exist")
    hf_dir = _from_gguf(source, work_dir) if source.suffix == ".gguf" else source
    if not hf_dir.is_dir():
        raise CheckpointError(f"checkpoint {source} is a file but not a .gguf; pass a Hugging Face directory "
                              "(config.json, weights, tokenizer) or a .gguf file")
    config = _config(hf_dir)
    if config is None:
        raise CheckpointError(f"{hf_dir} has no config.json: pass the directory save_pretrained wrote")
    if not is_causal_lm(hf_dir):
        raise UnsupportedArchitectureError(
            f"{hf_dir} holds {(config.get('architectures') or ['no architecture'])[0]}, not a causal LM "
            "(*ForCausalLM); build encoders with an encoder preset, or pass a decoder checkpoint")
    if not any((hf_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise CheckpointError(f"{hf_dir} has no tokenizer (tokenizer.json): save the tokenizer with the model")
    model_type = str(config.get("model_type") or "")
    if not model_type:
        raise CheckpointError(f"{hf_dir / 'config.json'} has no model_type: re-save the model with transformers")
    return LMCheckpoint(hf_dir, model_type, model_type, config, source)


def _from_gguf(path: Path, work_dir: Path | None) -> Path:
    """transformers dequantizes a .gguf into a float model; saved once as the directory the builders read."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(work_dir) / "hf_from_gguf" if work_dir else Path(tempfile.mkdtemp(prefix="engineforge-gguf-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:
        raise CheckpointError(f"{path}: transformers cannot read this GGUF file ({type(exc).__name__}: {exc}); "
                              "its architecture or quantization type may be unsupported") from exc
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
