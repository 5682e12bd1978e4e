"""GPU check: what only an NVIDIA GPU can verify, in one run (run it through `benchmarks/gpu_check.sh`).

On the demo checkpoint: build an fp16 and an int8 TensorRT engine (build-engine's trt-fp16 preset, and the
int8 ladder's unpruned rung or, with --full-int8, the whole trt-int8 preset), validate them on the GPU against
fp32 PyTorch, serve both through the embedded Triton and check the served answers equal the in-process engine,
then time each engine in-process at 1x128 and 8x128 against PyTorch fp32 eager on the same GPU (interleaved
rounds, median and p99). Writes reports/gpu-check/gpu_check.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engineforge import progress
from engineforge.engines.tensorrt_api import current_gpu, find_tensorrt

ROOT = Path("artifacts/gpu-check")


class CudaTorchEngine:
    """PyTorch fp32 eager on the GPU, timed as its users run it: host arrays in, logits back on the host."""

    runtime = "torch-cuda"

    def __init__(self, model: Any, input_names: tuple[str, ...]) -> None:
        import torch

        self.model, self.input_names, self.output_names = model.cuda().eval(), input_names, ("logits",)
        self._torch = torch

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            tensors = {n: torch.from_numpy(feeds[n]).cuda() for n in self.input_names if n in feeds}
            return self.model(**tensors).logits.float().cpu().numpy()

    def settings(self) -> dict[str, Any]:
        return {"runtime": self.runtime}


def _build(precision: str, preset: str) -> Any:
    """Build `preset` through the one build entry, published as `intent-<precision>`; the chosen build's report."""
    from engineforge.commands.build_engine import build_engine
    from engineforge.demo.finetune import EVAL_FILE, TRAIN_FILE, UNLABELLED_FILE

    return build_engine(ROOT.parent / "demo-checkpoint", preset=preset, output_dir=ROOT / f"build-{precision}",
                        data={"eval_data": EVAL_FILE, "train_data": TRAIN_FILE, "calibration_data": TRAIN_FILE,
                              "unlabelled_data": UNLABELLED_FILE}, overwrite=True,
                        publish={"repo_dir": str(ROOT / "model_repo"), "model_name": f"intent-{precision}"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-int8", action="store_true", help="the whole trt-int8 preset (prune + distill)")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("reports/gpu-check"))
    args = parser.parse_args(argv)
    gpu, trt = current_gpu(), find_tensorrt()
    if gpu is None or trt is None:
        print(f"gpu_check: needs a CUDA GPU ({gpu}) and TensorRT ({trt and trt.describe()})", file=sys.stderr)
        return 2
    progress.info(f"GPU {gpu[0]} ({gpu[1]}), {trt.describe()}")
    from engineforge.demo.finetune import EVAL_FILE, prepare_demo_checkpoint
    from engineforge.demo.run import check_served_answers
    from engineforge.engines import load_engine, measure_latencies, model_input_names
    from engineforge.serve.server import TritonServer

    started = time.perf_counter()
    prepare_demo_checkpoint(ROOT.parent / "demo-checkpoint")
    # Without --full-int8 only trt-int8's last rung (trt-int8-static: no distillation), so the check fits in minutes.
    presets = {"fp16": "trt-fp16", "int8": "trt-int8" if args.full_int8 else "trt-int8-static"}
    reports = {precision: _build(precision, preset) for precision, preset in presets.items()}
    texts = [json.loads(line)["text"] for line in EVAL_FILE.read_text().splitlines() if line.strip()][:16]
    served: dict[str, Any] = {}
    with progress.stage("serve both engines through Triton"):
        server = TritonServer(ROOT / "model_repo", log_file=args.out / "tritonserver.log").start()
        try:
            for precision, report in reports.items():
                rows = check_served_answers(server.grpc_url, f"intent-{precision}", Path(str(report.bundle_dir)), texts)
                served[precision] = max(r["max_prob_diff_vs_in_process"] for r in rows)
        finally:
            server.stop()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    checkpoint = ROOT.parent / "demo-checkpoint"
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint), attn_implementation="sdpa")
    engines = {"PyTorch fp32 eager (GPU)": CudaTorchEngine(model, tuple(model_input_names(tokenizer)))}
    for precision, report in reports.items():
        engines[f"TensorRT {precision}"] = load_engine(Path(str(report.bundle_dir)) / "model.plan", "tensorrt", 1)
    timings = {shape: measure_latencies(engines, len(tokenizer), batch=shape[0], seq_len=shape[1],
                                        iterations=args.iterations, settle_s=0.0)
               for shape in ((1, 128), (8, 128))}
    result = _result(gpu, trt.describe(), reports, served, timings, time.perf_counter() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "gpu_check.md").write_text(result["markdown"])
    print(result["markdown"])
    return 0


def _result(gpu: tuple[str, str], trt: str, reports: dict[str, Any], served: dict[str, float],
            timings: dict[tuple[int, int], dict[str, Any]], seconds: float) -> dict[str, Any]:
    base = {shape: t["PyTorch fp32 eager (GPU)"].median_ms for shape, t in timings.items()}
    lines = [f"# GPU check: {gpu[0]} ({gpu[1]}), {trt}", "", f"Total {seconds:.0f} s.", "",
             "| engine | eval acc % | agreement | served = in-process (max Δp) | 1×128 median / p99 ms | "
             "vs eager | 8×128 median / p99 ms | vs eager |", "|---|---|---|---|---|---|---|---|"]
    rows = []
    for name in timings[(1, 128)]:
        precision = name.split()[-1]
        report = reports.get(precision) if name.startswith("TensorRT") else None
        val = report.validation if report else None
        cells = [name, f"{val['engine_accuracy']:.2f}" if val else "–", f"{val['agreement']:.2%}" if val else "–",
                 f"{served[precision]:.1e}" if report else "–"]
        for shape in ((1, 128), (8, 128)):
            t = timings[shape][name]
            cells += [f"{t.median_ms:.3f} / {t.p99_ms:.3f}", f"{base[shape] / t.median_ms:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
        rows.append({"engine": name, "validation": val, "latency": {f"{b}x{s}": timings[(b, s)][name].to_dict()
                                                                   for b, s in timings}})
    return {"gpu": gpu, "tensorrt": trt, "seconds": round(seconds, 1), "rows": rows,
            "markdown": "\n".join(lines) + "\n"}


if __name__ == "__main__":
    sys.exit(main())
