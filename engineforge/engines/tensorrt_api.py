"""Which TensorRT is installed, and the few helpers build and runtime share.

The code is written against the TensorRT Python API, which full TensorRT (`import tensorrt`, datacenter and
desktop GPUs, builds only on a GPU) and TensorRT for RTX (`import tensorrt_rtx`, RTX GPUs SM75-SM121, builds
ahead of time without a GPU) both implement. Full TensorRT is preferred wherever it is installed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from engineforge.errors import EngineLoadError

# Module name -> flavour name written into engine metadata.
FLAVOURS = {"tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt-rtx"}
INSTALL_HINT = ("install TensorRT: `pip install 'engineforge[tensorrt]'` (TensorRT-RTX, builds without a GPU) or "
                "NVIDIA's `tensorrt` wheels on a machine that can reach their libraries")


@dataclass(frozen=True)
class TensorRT:
    module: Any
    flavour: str  # "tensorrt" or "tensorrt-rtx"
    version: str

    @property
    def builds_without_gpu(self) -> bool:
        return self.flavour == "tensorrt-rtx"

    @property
    def has_timing_cache(self) -> bool:
        # TensorRT-RTX keeps the API, but its timing cache operations are no-ops (its own deprecation notice).
        return self.flavour == "tensorrt"

    def describe(self) -> str:
        return f"{self.flavour} {self.version}"


def find_tensorrt() -> TensorRT | None:
    for module_name, flavour in FLAVOURS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return TensorRT(module, flavour, str(module.__version__))
    return None


def require_tensorrt(purpose: str) -> TensorRT:
    found = find_tensorrt()
    if found is None:
        raise EngineLoadError(f"{purpose} needs TensorRT, and neither `tensorrt` nor `tensorrt_rtx` imports: "
                              + INSTALL_HINT)
    return found


def make_logger(trt: TensorRT) -> Any:
    """An ILogger that keeps every warning and error, so failures can quote TensorRT's own words."""
    base = trt.module.ILogger

    class CapturingLogger(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.module.ILogger.Severity.WARNING):
                self.messages.append(str(msg))

        def last_error(self) -> str:
            return self.messages[-1] if self.messages else "no message from TensorRT"

    return CapturingLogger()


def supported_architectures(trt: TensorRT) -> list[str]:
    """GPU architectures the flavour can target ahead of time ("SM89", ...); empty for full TensorRT, which
    targets the GPU it builds on."""
    enum = getattr(trt.module, "ComputeCapability", None)
    if enum is None:
        return []
    return [name for name in enum.__members__ if name.startswith("SM")]


def current_gpu() -> tuple[str, str] | None:
    """(name, "SM<major><minor>") of CUDA device 0, or None when no CUDA GPU is usable here."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"SM{major}{minor}"
