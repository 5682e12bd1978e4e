"""Fair timing for the CPU benchmark: every engine timed interleaved with the others in one process (with
ONNX Runtime's thread spinning off) and alone, in a process of its own that loads nothing else.

Why both: interleaving makes ratios robust to machine-load drift, but engines in one process disturb each
other. ONNX Runtime's intra-op workers spin on the cores after each call by default, into the next engine's
turn; in one process the eager baseline measured 28.6 ms at 1x128 where it ran 17.2 ms alone on the same
kind of machine. Timed sessions here set `session.intra_op.allow_spinning=0`; "alone" runs each runtime as
its users do (defaults, spinning on: nothing else competes). OpenVINO has no spin switch: the pause and the
untimed call `measure_latencies` makes before each engine's round are what keep its workers out of the next turn.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHAPES = ((1, 32), (1, 128), (8, 32), (8, 128))


def quiet_ort_engine(path: Path, threads: int, length_buckets: tuple[int, ...] = (), bucket_max_batch: int = 0) -> Any:
    """The engine-layer ONNX Runtime session (same options as build and serving) with spinning off."""
    from engineforge.engines import load_engine, runtime_info

    return load_engine(path, "onnxruntime", threads, options=runtime_info("onnxruntime").quiet_options,
                       length_buckets=length_buckets, bucket_max_batch=bucket_max_batch)


def open_alone(runtime: str, path: Path, threads: int) -> Any:
    """An engine as its users open it: transformers for the eager baseline, else the engine layer."""
    from engineforge.engines import TOKEN_INPUTS, TorchEngine, load_engine

    if runtime == "torch":
        import torch
        from transformers import AutoModelForSequenceClassification

        torch.set_num_threads(threads)
        model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
        return TorchEngine(model, TOKEN_INPUTS)
    return load_engine(path, runtime, threads)


def time_alone(runtime: str, path: Path, threads: int, vocab_size: int, iterations: int) -> dict[str, Any]:
    """Latency per shape of one engine in a fresh interpreter (see module docstring)."""
    command = [sys.executable, str(HERE / "cpu_timing.py"), runtime, str(path), str(threads), str(vocab_size),
               str(iterations)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"timing {path} alone failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(argv: list[str]) -> int:
    from engineforge.engines import measure_latency

    runtime, path, threads, vocab_size, iterations = argv[0], Path(argv[1]), int(argv[2]), int(argv[3]), int(argv[4])
    engine = open_alone(runtime, path, threads)
    out = {f"{b}x{s}": measure_latency(engine, vocab_size, b, s, iterations=iterations, warmup=10,
                                       max_seconds=120).to_dict() for b, s in SHAPES}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(_child(sys.argv[1:]))
