#!/usr/bin/env bash
# GPU check, ready for the first machine with an NVIDIA GPU: install from the package registries, build fp16 and
# int8 TensorRT engines of the demo model, validate them on the GPU, serve them through the embedded Triton, and
# print in-process latency against PyTorch fp32 on the same GPU. About 5 minutes on a 16-core machine.
#   bash benchmarks/gpu_check.sh [--full-int8]      (report: reports/gpu-check/gpu_check.md)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader \
  || { echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing)" >&2; exit 2; }
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv-gpu
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip install --quiet"
$VENV/bin/python -m pip install --quiet --upgrade pip
# The project with its pins; the registry's default torch wheel for Linux carries CUDA.
$PIP -e .
$VENV/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "gpu_check: torch $($VENV/bin/python -c 'import torch; print(torch.__version__)') sees no CUDA GPU; install a" \
       "CUDA build of the pinned torch into $VENV (the package index here served a CPU build)" >&2; exit 2; }
# Full TensorRT first (datacenter GPUs such as H100/H200 need it); TensorRT-RTX where it cannot be installed.
$PIP tensorrt-cu12 || $PIP tensorrt-cu13 || $PIP "tensorrt-rtx-cu13==1.7.1.116"
$VENV/bin/python - <<'PY'
from engineforge.engines.tensorrt_api import current_gpu, find_tensorrt, supported_architectures
gpu, trt = current_gpu(), find_tensorrt()
print(f"gpu_check: GPU {gpu}, {trt and trt.describe()}")
if gpu is None or trt is None:
    raise SystemExit("gpu_check: torch sees no CUDA GPU or no TensorRT imports; see the pip output above")
if trt.flavour == "tensorrt-rtx" and gpu[1] not in supported_architectures(trt):
    raise SystemExit(f"gpu_check: only TensorRT-RTX installed, and it cannot target {gpu[1]} "
                     f"(it supports {supported_architectures(trt)}); install full TensorRT")
PY
$VENV/bin/python -m pytest -q -m "gpu or tensorrt" tests -p no:cacheprovider
exec $VENV/bin/python benchmarks/gpu_check.py "$@"
