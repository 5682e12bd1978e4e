"""`engineforge demo --task ner`: fine-tune the packaged MiniLM as a token classifier on the shipped support
messages (ORDER, PRODUCT, DATE, AMOUNT; cached) → build-engine judged by entity F1 and per-token agreement →
publish → Triton → served entities checked against the same engine in-process → closed-loop load test."""

from __future__ import annotations

import dataclasses
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
    from engineforge.build.config import BuildConfig
    from engineforge.build.presets import preset_candidates
    from engineforge.build.search import run_candidates
    from engineforge.build.steps import PublishConfig
    from engineforge.loadtest.config import LoadTestConfig
    from engineforge.loadtest.report import markdown_table, write_reports
    from engineforge.loadtest.runner import run_loadtest
    from engineforge.serve.server import TritonServer

    from .ner_finetune import prepare_ner_checkpoint

    with progress.stage("demo 1/4: NER demo checkpoint"):
        training = prepare_ner_checkpoint(settings.checkpoint_dir)
    candidates = [(name, BuildConfig(
        checkpoint=settings.checkpoint_dir, output_dir=settings.build_dir, eval_data=NER_EVAL_FILE,
        calibration_data=NER_TRAIN_FILE, overwrite=True, preset=settings.preset,
        steps=tuple(dataclasses.replace(s, repo_dir=str(settings.repo_dir), model_name=settings.model_name)
                    if isinstance(s, PublishConfig) else s for s in steps),
    )) for name, steps in preset_candidates(settings.preset)]
    with progress.stage("demo 2/4: build-engine (token classification)"):
        build = run_candidates(candidates)
    texts = [json.loads(line)["text"] for line in NER_EVAL_FILE.read_text().splitlines() if line.strip()]
    settings.report_dir.mkdir(parents=True, exist_ok=True)
    server = TritonServer(settings.repo_dir, log_file=settings.report_dir / "tritonserver.log")
    with progress.stage("demo 3/4: start Triton"):
        server.start()
    try:
        samples = check_served_entities(server.grpc_url, settings.model_name, Path(str(build.bundle_dir)), texts[:6])
        with progress.stage("demo 4/4: load test"):
            load = run_loadtest(LoadTestConfig(
                model=settings.model_name, url=server.grpc_url, mode="text", concurrency=settings.concurrency,
                duration_s=settings.duration_s, warmup_s=settings.warmup_s, texts=tuple(texts),
                texts_source=str(NER_EVAL_FILE), label=settings.preset))
            paths = write_reports(load, settings.report_dir, stem="loadtest")
    finally:
        server.stop()
    summary = {"training": training, "build": build.to_dict(), "samples": samples,
               "loadtest_reports": {k: str(v) for k, v in paths.items()}}
    summary["markdown"] = render_ner_summary(summary, markdown_table(load))
    (settings.report_dir / "summary.md").write_text(summary["markdown"])
    (settings.report_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    progress.info(f"demo reports in {settings.report_dir}/ (summary.md, loadtest.md/.json/.png)")
    return summary


def check_served_entities(url: str, model: str, bundle: Path, texts: list[str]) -> list[dict[str, Any]]:
    """Entities over gRPC and in-process (same bundle, runtime, settings and batch); they must be equal."""
    from engineforge.defaults import TOKENIZER_DIRNAME
    from engineforge.serve import engine_runtime as rt
    from engineforge.serve.client import EngineforgeClient
    from engineforge.serve.engine_spec import EngineSpec
    from engineforge.serve.ner_runtime import tagged_outputs
    from engineforge.serve.tokenize_runtime import load_tokenizer, tokenize_batch

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
