"""The three demos' summaries render from a build report and name the budget each build was held to."""

from __future__ import annotations

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
