"""An LM engine bundle on disk: `lm_engine.json` (the spec), the runtime's model files and the tokenizer.

    bundle/
      lm_engine.json   LMEngineSpec: runtime, precision, group size, family, limits, eos ids, build figures
      model/           what the runtime reads (an ONNX Runtime GenAI folder, or a save_pretrained directory)
      tokenizer/       the Hugging Face fast tokenizer the prompts are encoded with

`open_lm_bundle` is the one way to open one (build checks, benchmarks, the served Triton model, tests), so the engine
that is judged and timed in a build is the engine that is served.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engineforge.errors import ConfigError, RepositoryError

from .engine import LMEngine

SPEC_FILE = "lm_engine.json"
FORMAT = "engineforge-lm/1"
TEXT_GENERATION = "text-generation"


@dataclass(frozen=True)
class LMEngineSpec:
    runtime: str  # a name registered in lm/runtimes.py
    precision: str  # "fp32", "int8", "int4", "nf4"
    family: str  # the checkpoint's model_type
    max_length: int  # prompt + generated tokens per sequence
    eos_token_ids: tuple[int, ...]
    group_size: int | None = None  # block size of block-wise weight quantization
    max_batch: int = 8  # sequences decoded together
    threads: int | None = None
    model_dir: str = "model"
    tokenizer_dir: str = "tokenizer"
    task: str = TEXT_GENERATION
    format: str = FORMAT
    build: dict[str, Any] = field(default_factory=dict)  # figures from the build (quality, speed, size)

    def __post_init__(self) -> None:
        object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in self.eos_token_ids))
        if self.format != FORMAT:
            raise ConfigError(f"lm_engine.json format {self.format!r}: this engineforge reads {FORMAT!r}; rebuild")
        if self.max_length < 2 or self.max_batch < 1:
            raise ConfigError(f"lm_engine.json: max_length {self.max_length} and max_batch {self.max_batch} "
                              "must be >= 2 and >= 1")
        if not self.eos_token_ids:
            raise ConfigError("lm_engine.json: eos_token_ids is empty; the engine could never end a sequence")

    def save(self, bundle: Path) -> Path:
        path = Path(bundle) / SPEC_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, bundle: Path) -> LMEngineSpec:
        path = Path(bundle) / SPEC_FILE
        if not path.is_file():
            raise RepositoryError(f"{path} is missing: {bundle} is not an LM engine bundle (build one with "
                                  "build-engine --task text-generation)")
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise RepositoryError(f"{path} is not a valid LM engine spec ({exc}); rebuild the engine") from exc


def is_lm_bundle(path: Path) -> bool:
    return (Path(path) / SPEC_FILE).is_file()


def open_lm_bundle(bundle: Path, threads: int | None = None, max_batch: int | None = None) -> tuple[LMEngineSpec,
                                                                                                   LMEngine, Any]:
    """(spec, engine, tokenizer) of a bundle."""
    from engineforge.engines.tokenize_runtime import load_tokenizer

    from .runtimes import open_lm_engine

    bundle = Path(bundle)
    spec = LMEngineSpec.load(bundle)
    tokenizer = load_tokenizer(bundle / spec.tokenizer_dir)
    engine = open_lm_engine(spec, bundle / spec.model_dir, threads=threads or spec.threads,
                            max_batch=max_batch or spec.max_batch)
    return spec, engine, tokenizer
