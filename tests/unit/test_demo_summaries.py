"""The three demos' summaries render from a build report and name the budget each build was held to; the demo's
load test checks labelled answers, and its last lines say how to serve and query what it built."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engineforge.demo.embeddings import render_embedding_summary
from engineforge.demo.ner_demo import render_ner_summary
from engineforge.demo.run import render_summary

BUILD = {"steps": [{"name": "export"}, {"name": "static_int8"}], "precision": "int8-static-qdq",
         "runtime": "openvino", "total_seconds": 12.0, "sizes_mb": {"checkpoint weights": 90.9,
                                                                   "engine (published)": 58.7},
         "published": {"model_name": "m", "version": 1},
         "checkpoint": {"pooling": {"mode": "mean", "normalize": True}}}


def test_intent_summary_names_accuracy_and_budget():
    build = BUILD | {"validation": {"reference_accuracy": 96.9, "engine_accuracy": 96.6, "agreement": 0.984,
                                    "budget": {"max_accuracy_drop": 1.0, "min_agreement": 0.98}}}
    text = render_summary({"training": {"train_examples": 480, "labels": ["a", "b"], "eval_examples": 320},
                           "build": build, "samples": [{"text": "hi", "label": "a", "confidence": 0.9,
                                                        "max_prob_diff_vs_in_process": 0.0}]}, "| table |")
    assert "| eval accuracy | 96.90 % | 96.60 % |" in text and "Budget: accuracy drop ≤ 1.0 points" in text


def test_ner_summary_names_entity_f1_and_budget():
    build = BUILD | {"validation": {"reference_f1": 96.3, "engine_f1": 97.25, "agreement": 0.9959,
                                    "budget": {"max_accuracy_drop": 1.0, "min_agreement": 0.98}}}
    text = render_ner_summary({"training": {"train_examples": 630, "eval_examples": 240}, "build": build,
                               "samples": [{"text": "order 4471", "entities": [{"label": "ORDER", "text": "4471"}]}]},
                              "| table |")
    assert "| entity F1 (exact span and type) | 96.30 | 97.25 |" in text and "ORDER: 4471" in text
    assert "Budget: entity F1 drop ≤ 1.0 points, per-token agreement ≥ 98%" in text


def test_embedding_summary_names_cosine_recall_and_budget():
    build = BUILD | {"validation": {"cosine_mean": 0.9903, "cosine_worst": 0.9846, "reference_recall": 100.0,
                                    "engine_recall": 97.5, "recall_pairs": 40, "examples": 80,
                                    "budget": {"min_cosine_mean": 0.99, "min_cosine_worst": 0.95,
                                               "max_recall_drop": 2.0}}}
    text = render_embedding_summary({"build": build, "samples": [{"text": "hi", "dim": 384, "norm": 1.0,
                                                                  "max_diff_vs_in_process": 0.0}]}, "| table |")
    assert "| recall@10 on the pairs | 100.0 % | 97.5 % |" in text and "mean pooling + normalize" in text
    assert "Budget: mean cosine ≥ 0.99, worst ≥ 0.95, recall@10 drop ≤ 2.0 points." in text


class _FakeServer:
    """Stands in for TritonServer in the demo's serve-check-load flow: nothing starts."""

    grpc_url = "127.0.0.1:1"

    @classmethod
    def serving(cls, repo, **options):
        return cls()

    def start(self):
        return self

    def stop(self):
        pass


def _run_flow(monkeypatch, tmp_path, texts_file):
    """serve_check_and_load with Triton and the load generator replaced: the load test's settings, its table."""
    from engineforge.demo.flow import serve_check_and_load
    from engineforge.demo.run import DemoSettings
    from engineforge.loadtest import markdown_report, report_files, runner
    from engineforge.loadtest.metrics import calculate_metrics
    from engineforge.loadtest.records import RequestResult
    from engineforge.loadtest.results import LevelResult, LoadTestResult
    from engineforge.serve import server

    seen = {}

    def fake_loadtest(config):  # a level where 3 of 4 answers had the expected label, when labels were given
        seen["config"] = config
        correct = (1, 1, 1, 0) if config.labels else (None,) * 4
        records = [RequestResult(0.0, 0.002, ok=True, correct=c) for c in correct]
        level = LevelResult(concurrency=1, window_s=1.0, metrics=calculate_metrics(records, 1.0), records=records,
                            warmup_requests=0, client_cpu_percent=10.0)
        return LoadTestResult(config, [level], "2025-01-01T00:00:00+00:00", "2025-01-01T00:00:01+00:00", {})

    monkeypatch.setattr(server, "TritonServer", _FakeServer)
    monkeypatch.setattr(runner, "run_loadtest", fake_loadtest)
    monkeypatch.setattr(report_files, "write_reports", lambda *a, **k: {})
    settings = DemoSettings(repo_dir=tmp_path / "repo", report_dir=tmp_path / "reports")
    _, load, _ = serve_check_and_load(settings, type("Build", (), {"bundle_dir": tmp_path})(), texts_file,
                                      lambda *a: [], 2, "demo 3/4:")
    return seen["config"], markdown_report.markdown_table(load)


def test_intent_demo_load_test_checks_every_answer_against_the_eval_labels(monkeypatch, tmp_path):
    from engineforge.demo.finetune import EVAL_FILE

    config, table = _run_flow(monkeypatch, tmp_path, EVAL_FILE)
    rows = [json.loads(line) for line in EVAL_FILE.read_text().splitlines() if line.strip()]
    assert config.texts == tuple(r["text"] for r in rows) and config.labels == tuple(r["label"] for r in rows)
    header, _, row = table.splitlines()
    assert header.endswith("| correct % |") and row.endswith("| 75.00 |")
    build = BUILD | {"validation": {"reference_accuracy": 96.9, "engine_accuracy": 96.6, "agreement": 0.984,
                                    "budget": {"max_accuracy_drop": 1.0, "min_agreement": 0.98}}}
    text = render_summary({"training": {"train_examples": 480, "labels": ["a"], "eval_examples": 320}, "build": build,
                           "samples": [{"text": "hi", "label": "a", "confidence": 0.9,
                                        "max_prob_diff_vs_in_process": 0.0}]}, table)
    assert "| 75.00 |" in text and "`correct %`: served answers whose label equals the eval set's" in text


def test_unlabelled_demo_load_tests_show_no_correct_column(monkeypatch, tmp_path):
    from engineforge.demo.embeddings import PAIRS_FILE
    from engineforge.demo.ner_data import NER_EVAL_FILE

    for texts_file in (NER_EVAL_FILE, PAIRS_FILE):
        config, table = _run_flow(monkeypatch, tmp_path, texts_file)
        assert config.labels == () and len(config.texts) > 10 and "correct" not in table


def test_demo_ends_with_the_commands_that_serve_and_query_it(monkeypatch):
    from engineforge.demo import flow

    monkeypatch.setattr(flow.sys, "argv", ["/somewhere/else/bin/engineforge", "demo"])
    monkeypatch.setattr(flow.shutil, "which", lambda name: None)
    text = flow.next_steps(Path("model_repo"), "intent", "where is my parcel?", keep_serving=False)
    assert text.splitlines()[1:] == ["  /somewhere/else/bin/engineforge serve --repo model_repo",
                                     "  # then, in another terminal:",
                                     "  /somewhere/else/bin/engineforge infer --model intent 'where is my parcel?'"]
    monkeypatch.setattr(flow.sys, "argv", [str(Path.cwd() / ".venv/bin/engineforge"), "demo"])
    kept = flow.next_steps(Path("model_repo"), "intent", "where is my parcel?", keep_serving=True)
    assert kept.splitlines() == ["Serving model_repo until Ctrl-C (`.venv/bin/engineforge serve --repo model_repo`); "
                                 "query it from another terminal:",
                                 "  .venv/bin/engineforge infer --model intent 'where is my parcel?'"]


def test_demo_keep_serving_runs_engineforge_serve_on_the_repository(monkeypatch):
    from engineforge.demo import flow
    from engineforge.demo.run import add_parser
    from engineforge.serve import cli as serve_cli

    served = {}
    monkeypatch.setattr(serve_cli, "run_serve", lambda args: served.update(vars(args)) or 0)
    assert flow.keep_serving(Path("model_repo")) == 0
    assert served["repo"] == "model_repo" and served["grpc_port"] == 8001 and served["bind"] == "127.0.0.1"
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    assert parser.parse_args(["demo", "--keep-serving"]).keep_serving
    assert not parser.parse_args(["demo"]).keep_serving


def test_engineforge_demo_prints_its_report_then_the_next_commands(monkeypatch, capsys):
    from engineforge.demo import flow, run

    parser = argparse.ArgumentParser()
    run.add_parser(parser.add_subparsers())
    monkeypatch.setattr(run, "run_demo", lambda settings: {"markdown": "# engineforge demo"})
    monkeypatch.setattr(flow, "program", lambda: "engineforge")
    served = []
    monkeypatch.setattr(flow, "keep_serving", lambda repo: served.append(repo) or 0)
    assert run.run(parser.parse_args(["demo", "--preset", "int8"])) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "# engineforge demo" and out[-3:] == [
        "  engineforge serve --repo model_repo", "  # then, in another terminal:",
        "  engineforge infer --model intent 'where is my parcel? it was due on monday'"]
    assert served == []
    assert run.run(parser.parse_args(["demo", "--preset", "int8", "--keep-serving"])) == 0
    assert served == [Path("model_repo")] and "Serving model_repo until Ctrl-C" in capsys.readouterr().out


def test_generation_summary_rounds_load_figures_and_says_when_none_happened():
    from engineforge.demo.generation import GenerationDemoSettings, render

    levels = [{"concurrency": 1, "generation": {"ttft_ms": {"p50": 34.82996649836423}, "itl_ms": {"p50": 23.9377},
                                                "output_tokens_per_s": 41.61234}},
              {"concurrency": 4, "generation": {"ttft_ms": {}, "itl_ms": {}, "output_tokens_per_s": None}}]
    summary = {"build": {"preset": "lm-int4", "chosen": "onnxruntime fp32", "candidates": []}, "answers": [],
               "loadtest": {"levels": levels}}
    text = render(summary, GenerationDemoSettings())
    assert "- load, concurrency 1: TTFT p50 34.8 ms, ITL p50 23.9 ms, 41.6 output tok/s" in text
    assert "- load, concurrency 4: TTFT p50 – (no request finished), ITL p50 – (no request finished), – output" in text
    assert "The instruct model as is (no fine-tune)." in text
    finetune = {"examples": 40, "steps": 15, "train_seconds": 70.0, "eval_perplexity_before": 68.25,
                "eval_perplexity_after": 48.543}
    assert "eval replies 68.25 -> 48.543." in render(summary | {"finetune": finetune}, GenerationDemoSettings())
