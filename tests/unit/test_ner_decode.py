"""NER decoding (simple / first / max aggregation) and seqeval-style entity F1, on hand-made token outputs."""

from __future__ import annotations

import numpy as np
import pytest

from engineforge.ner import decode_entities, entity_f1, spans, split_tag, token_tags

LABELS = ("O", "B-PRODUCT", "I-PRODUCT", "B-ORDER", "I-ORDER")
TEXT = "refund the airpods order 4471"
#        0123456789012345678901234567 (airpods 11-18, 4471 25-29)
# tokens: [CLS] refund the air ##pods order 44 ##71 [SEP]
OFFSETS = np.array([(0, 0), (0, 6), (7, 10), (11, 14), (14, 18), (19, 24), (25, 27), (27, 29), (0, 0)])
WORD_IDS = [None, 0, 1, 2, 2, 3, 4, 4, None]


def _probs(tags: list[str], confidence: float = 0.9) -> np.ndarray:
    probs = np.full((len(tags), len(LABELS)), (1 - confidence) / (len(LABELS) - 1))
    for i, tag in enumerate(tags):
        probs[i, LABELS.index(tag)] = confidence
    return probs


def test_simple_groups_consecutive_tokens_of_one_type_into_character_spans():
    probs = _probs(["O", "O", "O", "B-PRODUCT", "I-PRODUCT", "O", "B-ORDER", "I-ORDER", "O"])
    entities = decode_entities(probs, OFFSETS, LABELS, TEXT, WORD_IDS, "simple")
    assert [(e.label, e.start, e.end, e.text) for e in entities] == [("PRODUCT", 11, 18, "airpods"),
                                                                     ("ORDER", 25, 29, "4471")]
    assert entities[0].score == pytest.approx(0.9)


def test_a_b_tag_starts_a_new_entity_and_a_type_change_splits():
    probs = _probs(["O", "O", "O", "B-PRODUCT", "B-PRODUCT", "O", "B-ORDER", "I-PRODUCT", "O"])
    entities = decode_entities(probs, OFFSETS, LABELS, TEXT, WORD_IDS, "simple")
    assert [(e.label, e.text) for e in entities] == [("PRODUCT", "air"), ("PRODUCT", "pods"), ("ORDER", "44"),
                                                     ("PRODUCT", "71")]


def test_first_and_max_decide_per_word():
    # "##pods" says O with low confidence, "##71" says B-ORDER with more confidence than "44" (O).
    probs = _probs(["O", "O", "O", "B-PRODUCT", "O", "O", "O", "B-ORDER", "O"])
    probs[4] = 0.25  # sub-word unsure
    probs[4, 0] = 0.3
    probs[7, LABELS.index("B-ORDER")] = 0.95
    first = decode_entities(probs, OFFSETS, LABELS, TEXT, WORD_IDS, "first")
    assert [(e.label, e.text) for e in first] == [("PRODUCT", "airpods")]  # word 4 takes "44"'s O
    best = decode_entities(probs, OFFSETS, LABELS, TEXT, WORD_IDS, "max")
    assert [(e.label, e.text) for e in best] == [("PRODUCT", "airpods"), ("ORDER", "4471")]
    assert best[1].score == pytest.approx(0.95)


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="use one of simple, first, max"):
        decode_entities(_probs(["O"] * 9), OFFSETS, LABELS, TEXT, WORD_IDS, "average")


def test_entity_f1_is_exact_span_and_type():
    gold = [{("PRODUCT", 11, 18), ("ORDER", 25, 29)}, set()]
    assert entity_f1(gold, gold)["f1"] == 100.0
    partial = [{("PRODUCT", 11, 18), ("ORDER", 25, 27)}, {("ORDER", 0, 2)}]  # one right, a short span, a spurious
    scores = entity_f1(gold, partial)
    assert scores == {"precision": pytest.approx(33.333, abs=1e-3), "recall": 50.0, "f1": pytest.approx(40.0)}
    assert entity_f1([set()], [set()])["f1"] == 100.0  # nothing to find, nothing found


def test_gold_spans_become_iob2_token_tags_and_back():
    gold = [{"label": "PRODUCT", "start": 11, "end": 18}, {"label": "ORDER", "start": 25, "end": 29}]
    tags = token_tags(OFFSETS, gold, LABELS)
    assert [LABELS[t] if t >= 0 else None for t in tags] == [None, "O", "O", "B-PRODUCT", "I-PRODUCT", "O",
                                                             "B-ORDER", "I-ORDER", None]
    probs = _probs([LABELS[t] if t >= 0 else "O" for t in tags])
    assert spans(decode_entities(probs, OFFSETS, LABELS, TEXT)) == spans(gold)
    assert split_tag("S-DATE") == ("B", "DATE") and split_tag("O") == ("O", "") and split_tag("MISC") == ("I", "MISC")
