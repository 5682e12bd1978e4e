#!/usr/bin/env bash
# NVIDIA GenAI-Perf for benchmarks/bench_genai_perf.py, in its own venv (artifacts/genai-perf/: its pins, numpy < 2
# and pandas, must not touch the project's). GenAI-Perf drives perf_analyzer: PyPI's perf-analyzer package holds no
# binary here, so it comes from tritonclient 2.48.0, the newest wheel whose binary runs on this glibc (2.52 needs
# 2.38); it links libcudart (NVIDIA's CUDA runtime wheel, loads without a GPU) and libb64 (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=artifacts/genai-perf
if ! ldconfig -p | grep -q libb64.so.0d; then
  (apt-get install -y libb64-0d || (apt-get update && apt-get install -y libb64-0d)) >/dev/null
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet genai-perf==0.0.16 "pandas<2.3" nvidia-cuda-runtime-cu12==12.9.79
"$venv/bin/pip" install --quiet --no-deps --force-reinstall tritonclient==2.48.0  # again: restores the binary
cudart=$("$venv/bin/python" -c "import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], 'lib'))")
# genai-perf runs `perf_analyzer` from PATH: a wrapper that finds libcudart, first on the venv's PATH.
mv -f "$venv/bin/perf_analyzer" "$venv/bin/perf_analyzer.bin"
cat > "$venv/bin/perf_analyzer" <<SH
#!/usr/bin/env bash
LD_LIBRARY_PATH="$cudart\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$(readlink -f "$venv")/bin/perf_analyzer.bin" "\$@"
SH
chmod +x "$venv/bin/perf_analyzer"
cat > "$venv/bin/genai-perf-run" <<SH
#!/usr/bin/env bash
PATH="$(readlink -f "$venv")/bin:\$PATH" exec "$(readlink -f "$venv")/bin/genai-perf" "\$@"
SH
chmod +x "$venv/bin/genai-perf-run"
usage=$("$venv/bin/perf_analyzer" 2>&1 || true)  # no arguments: it prints its usage if it loads at all
[[ "$usage" == *Usage* ]] || { echo "perf_analyzer does not run here: ${usage:0:300}" >&2; exit 1; }
echo "genai-perf installed: $venv/bin/genai-perf-run"
