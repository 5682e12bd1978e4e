#!/usr/bin/env bash
# Triton's C++ perf_analyzer for benchmarks/bench_loadgen.py, from the registries this machine can reach:
# tritonclient 2.41.1 is the last wheel that ships the binary; it links libcudart (from NVIDIA's CUDA runtime
# wheel; loads fine without a GPU) and libb64 (Debian). Installs into artifacts/perf_analyzer/.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=artifacts/perf_analyzer
mkdir -p "$dest"
if ! ldconfig -p | grep -q libb64.so.0d; then
  (apt-get install -y libb64-0d || (apt-get update && apt-get install -y libb64-0d)) >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip=.venv/bin/pip
$pip download --quiet --no-deps --only-binary=:all: --platform manylinux1_x86_64 tritonclient==2.41.1 -d "$tmp"
$pip download --quiet --no-deps nvidia-cuda-runtime-cu12==12.9.79 -d "$tmp"
unzip -q -o "$tmp"/tritonclient-2.41.1-*.whl 'tritonclient-2.41.1.data/data/bin/perf_analyzer' -d "$tmp/tc"
unzip -q -o "$tmp"/nvidia_cuda_runtime_cu12-*.whl 'nvidia/cuda_runtime/lib/*' -d "$tmp/cuda"
install -m 755 "$tmp/tc/tritonclient-2.41.1.data/data/bin/perf_analyzer" "$dest/perf_analyzer.bin"
cp "$tmp"/cuda/nvidia/cuda_runtime/lib/libcudart.so.12 "$dest/"
cat > "$dest/perf_analyzer" <<'SH'
#!/usr/bin/env bash
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/perf_analyzer.bin" "$@"
SH
chmod +x "$dest/perf_analyzer"
"$dest/perf_analyzer" --version 2>&1 | head -1 || true
echo "perf_analyzer installed: $dest/perf_analyzer"
