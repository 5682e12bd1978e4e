"""The peers engineforge is measured against, each made the way its tool makes it.

- PyTorch fp32 eager: the fine-tuned checkpoint as transformers loads it (sdpa attention).
- ONNX Runtime fp32: the exported graph with ORT's BERT fusions (Optimum's ORTOptimizer does the same).
- ONNX Runtime dynamic int8, per-channel, unpruned: `quantize_dynamic` on the plain export with QInt8
  per-channel weights, the configuration of Optimum's `AutoQuantizationConfig.avx512_vnni(is_static=False,
  per_channel=True)`.
- OpenVINO fp32 and int8, unpruned: the export read by OpenVINO; int8 is NNCF post-training quantization
  (`nncf.quantize`, 300 calibration texts), which is what optimum-intel's OVQuantizer runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _size(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6, 2)


def build_peers(checkpoint: Path, eval_file: Path, train_file: Path, out: Path) -> list[Any]:
    from bench_cpu import Candidate  # type: ignore[import-not-found]
    from transformers import AutoModelForSequenceClassification

    from engineforge.build.steps import ExportConfig, GraphOptimizeConfig
    from engineforge.commands.build_engine import build_engine

    out.mkdir(parents=True, exist_ok=True)
    report = build_engine(checkpoint, steps=(ExportConfig(), GraphOptimizeConfig()), output_dir=out / "export",
                          data={"eval_data": eval_file}, publish=False, overwrite=True)
    work = Path(str(report.bundle_dir)).parent / "work"
    export, fused = work / "model.fp32.onnx", work / "model.opt.onnx"

    dynamic = out / "ort-dynamic-int8.onnx"
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(export), str(dynamic), weight_type=QuantType.QInt8, per_channel=True)
    nncf_int8 = out / "openvino-nncf-int8.xml"
    _nncf_quantize(export, train_file, checkpoint, nncf_int8)

    eager = AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).eval()  # default (sdpa) attention
    return [
        Candidate("PyTorch fp32 eager", "peer", "torch", None, model=eager,
                  size_mb=_size(checkpoint / "model.safetensors")),
        Candidate("ONNX Runtime fp32 (fused)", "peer", "onnxruntime", fused, size_mb=_size(fused)),
        Candidate("ONNX Runtime dynamic int8 per-channel (Optimum)", "peer", "onnxruntime", dynamic,
                  size_mb=_size(dynamic)),
        Candidate("OpenVINO fp32", "peer", "openvino", export, size_mb=_size(export)),
        Candidate("OpenVINO int8 NNCF (optimum-intel)", "peer", "openvino", nncf_int8,
                  size_mb=round(_size(nncf_int8) + _size(nncf_int8.with_suffix(".bin")), 2)),
    ]


def _nncf_quantize(onnx_path: Path, train_file: Path, checkpoint: Path, out_xml: Path) -> None:
    import nncf
    import openvino as ov
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    texts = [json.loads(line)["text"] for line in train_file.read_text().splitlines() if line.strip()][:300]
    core = ov.Core()
    model = core.read_model(str(onnx_path))
    names = [p.get_any_name() for p in model.inputs]

    def transform(text: str) -> dict[str, Any]:
        encoded = tokenizer([text], truncation=True, max_length=128, return_tensors="np")
        return {n: encoded[n].astype("int64") for n in names}

    quantized = nncf.quantize(model, nncf.Dataset(texts, transform), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(texts))
    ov.save_model(quantized, str(out_xml))
