"""Eval data for each task: NER character spans and entity types, embedding pairs; bad rows name line and fix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engineforge.build.embedding_quality import compare_embeddings, recall_at_k
from engineforge.data import load_examples
from engineforge.errors import DataError


def _write(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ner_rows_are_read_sorted_and_checked(tmp_path):
    path = _write(tmp_path, [{"text": "refund order 4471 for the mug", "entities": [
        {"label": "PRODUCT", "start": 26, "end": 29}, {"label": "ORDER", "start": 13, "end": 17}]}])
    (example,) = load_examples(path, entity_types=["ORDER", "PRODUCT"])
    assert [e["label"] for e in example.entities] == ["ORDER", "PRODUCT"]
    with pytest.raises(DataError, match=r"uses entity types \['PRODUCT'\] that the model does not tag"):
        load_examples(path, entity_types=["ORDER"])


@pytest.mark.parametrize("entities,message", [
    ([{"label": "ORDER", "start": 5, "end": 40}], r"data.jsonl:1: 'entities': span 5..40 of 'ORDER' is not inside"),
    ([{"start": 0, "end": 2}], "each entity needs a string 'label'"),
    ({"label": "ORDER"}, "must be a list of"),
])
def test_bad_entity_rows_name_the_line(tmp_path, entities, message):
    with pytest.raises(DataError, match=message):
        load_examples(_write(tmp_path, [{"text": "order 4471", "entities": entities}]), entity_types=["ORDER"])


def test_embedding_pairs_drop_labels_and_need_text(tmp_path):
    (example,) = load_examples(_write(tmp_path, [{"text": "a", "positive": "b", "label": "x"}]), labels=())
    assert (example.positive, example.label) == ("b", None)
    with pytest.raises(DataError, match="'positive' must be a non-empty text"):
        load_examples(_write(tmp_path, [{"text": "a", "positive": " "}]), labels=())


def test_recall_and_cosine_are_pure_functions_of_the_embeddings():
    queries = np.eye(4)
    assert recall_at_k(queries, queries, k=1) == 100.0
    assert recall_at_k(queries, queries[[1, 0, 2, 3]], k=1) == 50.0  # two positives swapped
    reference = np.vstack([queries, queries])  # 4 queries, then their 4 positives
    moved = reference.copy()
    moved[5] = [1, 0, 0, 0]  # the positive of query 1 now looks like query 0's
    result = compare_embeddings(reference, moved, n_queries=4)
    assert result.recall_pairs == 4 and result.reference_recall == 100.0 and result.engine_recall == 100.0
    assert result.cosine_worst == pytest.approx(0.0) and result.worst_example == 5
    assert compare_embeddings(reference, moved, 4).cosine_mean == pytest.approx(7 / 8)
