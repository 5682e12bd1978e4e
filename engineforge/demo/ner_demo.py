"""`engineforge demo --task ner`: fine-tune the packaged MiniLM as a token classifier on the shipped support
messages (ORDER, PRODUCT, DATE, AMOUNT; cached) → build-engine judged by entity F1 and per-token agreement →
publish → Triton → served entities checked against the same engine in-process → closed-loop load test."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.errors import EngineforgeError

from .ner_data import NER_EVAL_FILE, NER_TRAIN_FILE


@dataclass(frozen=True)
class NerDemoSettings:
    checkpoint_dir: Path = Path("artifacts/demo-ner-checkpoint")
    build_dir: Path = Path("artifacts/builds/demo-ner")
    repo_dir: Path = Path("model_repo")
    report_dir: Path = Path("reports/demo-ner")
    model_name: str = "ner"
    preset: str = "int8-static"
    concurrency: tuple[int, ...] = (1, 4)
    duration_s: float = 15.0
    warmup_s: float = 3.0


def run_ner_demo(settings: NerDemoSettings) -> dict[str, Any]:
    from .flow import build_and_publish, serve_check_and_load, write_summary
    from .ner_finetune import prepare_ner_checkpoint

    with progress.stage("demo 1/4: NER demo checkpoint"):
        training = prepare_ner_checkpoint(settings.checkpoint_dir)
    with progress.stage("demo 2/4: build-engine (token classification)"):
        build = build_and_publish(settings, settings.checkpoint_dir, eval_data=NER_EVAL_FILE,
                                 calibration_data=NER_TRAIN_FILE)
    samples, load, paths = serve_check_and_load(settings, build, NER_EVAL_FILE, check_served_entities, 6,
                                                "demo 3/4:")
    summary = {"training": training, "build": build.to_dict(), "samples": samples, "loadtest_reports": paths}
    return write_summary(settings, summary, render_ner_summary, load)


def check_served_entities(url: str, model: str, bundle: Path, texts: list[str]) -> list[dict[str, Any]]:
    """Entities over gRPC and in-process (same bundle, runtime, settings and batch); they must be equal."""
    from engineforge.defaults import TOKENIZER_DIRNAME
    from engineforge.engines.engine_spec import EngineSpec
    from engineforge.engines.tokenize_runtime import load_tokenizer, tokenize_batch
    from engineforge.serve import engine_runtime as rt
    from engineforge.serve.client import EngineforgeClient
    from engineforge.serve.ner_runtime import tagged_outputs

    spec = EngineSpec.load(bundle)
    arrays = tokenize_batch(load_tokenizer(bundle / TOKENIZER_DIRNAME), texts, spec.max_sequence_length, True)
    request = rt.RequestArrays(arrays["input_ids"], arrays["attention_mask"], arrays["token_type_ids"])
    (rows,) = rt.run_batch(rt.open_bundle_engine(bundle, spec), spec, [request])
    if isinstance(rows, Exception):
        raise EngineforgeError(f"the engine failed in-process: {rows}")
    local, _ = tagged_outputs(rows, spec.labels, arrays["attention_mask"], arrays["offsets"], arrays["word_ids"],
                              texts)
    with EngineforgeClient(url) as client:
        served = client.entities(texts, model=model)
    samples = []
    for text, got, expected in zip(texts, served, local, strict=True):
        if got != json.loads(expected)["simple"]:
            raise EngineforgeError(f"served entities differ from in-process {spec.runtime} for {text!r}: {got}")
        samples.append({"text": text, "entities": got})
    return samples


def render_ner_summary(summary: dict[str, Any], load_table: str) -> str:
    training, build = summary["training"], summary["build"]
    val, sizes = build["validation"], build["sizes_mb"]
    lines = [
        "# engineforge demo: token classification (NER)", "",
        f"Model: all-MiniLM-L6-v2 fine-tuned as a token classifier on {training['train_examples']} support "
        f"messages (ORDER, PRODUCT, DATE, AMOUNT); eval set {training['eval_examples']} messages written from "
        "other templates.", "",
        "## Build", "", "| | fp32 PyTorch | engine |", "|---|---|---|",
        f"| entity F1 (exact span and type) | {val['reference_f1']:.2f} | {val['engine_f1']:.2f} |",
        f"| per-token tag agreement with fp32 | – | {val['agreement']:.2%} |",
        f"| model file | {sizes.get('checkpoint weights')} MB | {sizes.get('engine (published)')} MB |", "",
        f"Budget: entity F1 drop ≤ {val['budget']['max_accuracy_drop']} points, per-token agreement ≥ "
        f"{val['budget']['min_agreement']:.0%}.", "",
        f"Steps {' → '.join(s['name'] for s in build['steps'])}; precision {build['precision']} in "
        f"{build['runtime']}; build time {build['total_seconds']:.1f} s.", "",
        "## Served over gRPC (tokenizer → engine → entities, simple aggregation)", "",
        "| text | entities |", "|---|---|",
    ]
    lines += [f"| {row['text'][:60]} | " + ", ".join(f"{e['label']}: {e['text']}" for e in row["entities"]) + " |"
              for row in summary["samples"]]
    lines += ["", "Served entities equal the same engine run in-process.", "",
              "## Load test (closed loop, raw text over gRPC)", "", load_table, ""]
    return "\n".join(lines)
