"""The LM builder registry: how a Hugging Face causal-LM directory becomes one runtime's model files at one
precision (an `LMCandidate`). Each runtime module registers its builder and says which families and precisions it
can build; the LM build (`build.py`) tries the candidates a preset names and keeps the fastest within budget.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge.errors import ConfigError, UnsupportedArchitectureError

PRECISIONS = ("fp32", "int8", "int4", "nf4")
METHODS = (None, "rtn", "k_quant_mixed", "gguf")


@dataclass(frozen=True)
class LMCandidate:
    runtime: str
    precision: str
    group_size: int | None = None  # block size of block-wise weight quantization (int4/int8)
    # How int4 weights are rounded and placed: None/"rtn" round to nearest, every MatMul int4; "k_quant_mixed"
    # k-quant rounding with the last MatMul (lm_head) and the most sensitive layers in int8 (llama.cpp's Q4_K_M idea);
    # "gguf" a .gguf checkpoint's own Q4_0 / Q4_1 blocks kept as they are (gguf_blocks.py).
    method: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"LM quantization method {self.method!r}: choose from {', '.join(map(str, METHODS))}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"LM precision {self.precision!r}: choose from {', '.join(PRECISIONS)}")
        if self.group_size is not None and (self.group_size < 16 or self.group_size & (self.group_size - 1)):
            raise ConfigError(f"group_size {self.group_size}: use a power of two >= 16 (32 and 128 are usual)")

    @property
    def name(self) -> str:
        group = f" g{self.group_size}" if self.group_size else ""
        method = f" {self.method}" if self.method else ""
        return f"{self.runtime} {self.precision}{group}{method}"


# (hf_dir, candidate, model_dir, threads) -> details for the report (sizes, settings); writes model_dir.
BuildFn = Callable[[Path, LMCandidate, Path, int | None], dict[str, Any]]
# (family, candidate) -> "" when buildable, else the reason it is not.
CheckFn = Callable[[str, LMCandidate], str]


@dataclass(frozen=True)
class LMBuilder:
    runtime: str
    build: BuildFn
    check: CheckFn


_BUILDERS: dict[str, LMBuilder] = {}


def buildable_config(hf_dir: Path, candidate: LMCandidate, check: CheckFn) -> dict[str, Any]:
    """config.json of `hf_dir`, once `check` has passed its model_type for `candidate` (a builder's first step);
    UnsupportedArchitectureError with the reason otherwise."""
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    reason = check(str(config.get("model_type")), candidate)
    if reason:
        raise UnsupportedArchitectureError(f"cannot build {candidate.name} from {hf_dir}: {reason}")
    return config


def register_lm_builder(runtime: str, check: CheckFn) -> Callable[[BuildFn], BuildFn]:
    def register(build: BuildFn) -> BuildFn:
        _BUILDERS[runtime] = LMBuilder(runtime, build, check)
        return build
    return register


def lm_builder(runtime: str) -> LMBuilder:
    _import_builtins()
    if runtime not in _BUILDERS:
        raise ConfigError(f"no LM builder for runtime {runtime!r}; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[runtime]


def why_not(family: str, candidate: LMCandidate) -> str:
    """"" when `candidate` can be built for `family`, else the reason (for refusals and reports)."""
    _import_builtins()
    builder = _BUILDERS.get(candidate.runtime)
    if builder is None:
        return f"no builder for runtime {candidate.runtime!r}"
    return builder.check(family, candidate)


def _import_builtins() -> None:
    import importlib

    for module in ("engineforge.build.lm.torch_builder", "engineforge.build.lm.ortgenai_builder",
                   "engineforge.build.lm.openvino_builder"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a missing runtime package: its builder is simply not registered
                continue
