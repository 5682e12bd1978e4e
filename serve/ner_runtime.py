"""Token-classifier responses, independent of Triton: tags and entities for one request of the engine model.

The tokenizer model sends OFFSETS and WORD_IDS beside the token ids, and the ensemble routes TEXT to the
engine too, so entities carry character spans and their text. Called with token ids alone, an entity's
start/end are token positions and its text is empty.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from engineforge.ner import STRATEGIES, decode_entities

from .engine_runtime import InvalidRequestError, TaggedRows


def check_extras(ids_shape: tuple[int, ...], offsets: np.ndarray | None, word_ids: np.ndarray | None,
                 texts: Sequence[str] | None) -> None:
    """OFFSETS [batch, seq, 2], WORD_IDS [batch, seq] and TEXT (batch texts) must match INPUT_IDS."""
    batch, seq = ids_shape
    if offsets is not None and (offsets.shape != (batch, seq, 2) or offsets.dtype.kind not in "iu"):
        raise InvalidRequestError(f"OFFSETS must be integers of shape [{batch}, {seq}, 2] like INPUT_IDS, got "
                                  f"{offsets.dtype} {list(offsets.shape)}")
    if word_ids is not None and (word_ids.shape != (batch, seq) or word_ids.dtype.kind not in "iu"):
        raise InvalidRequestError(f"WORD_IDS must be integers of shape [{batch}, {seq}] like INPUT_IDS, got "
                                  f"{word_ids.dtype} {list(word_ids.shape)}")
    if texts is not None and len(texts) != batch:
        raise InvalidRequestError(f"TEXT holds {len(texts)} texts for a batch of {batch} token rows")


def tagged_outputs(rows: TaggedRows, labels: Sequence[str], attention_mask: np.ndarray,
                   offsets: np.ndarray | None = None, word_ids: np.ndarray | None = None,
                   texts: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(ENTITIES, TOKEN_LABELS) per row as JSON strings: entities keyed by strategy, and every real token's
    tag (padding excluded; special tokens included, tagged as predicted)."""
    entities_json, tags_json = [], []
    for i, probabilities in enumerate(rows.probabilities):
        real = int(attention_mask[i].sum())
        if offsets is not None:
            spans = offsets[i, :real]
        else:  # token positions stand in for characters; specials are tokens like any other here
            spans = np.stack([np.arange(real), np.arange(1, real + 1)], axis=1)
        text = texts[i] if texts is not None else ""
        words = [int(w) if w >= 0 else None for w in word_ids[i, :real]] if word_ids is not None else None
        entities = {strategy: [e.to_dict() for e in decode_entities(probabilities[:real], spans, labels, text,
                                                                    words, strategy)]
                    for strategy in STRATEGIES}
        entities_json.append(json.dumps(entities))
        tags_json.append(json.dumps([labels[int(k)] for k in probabilities[:real].argmax(-1)]))
    return entities_json, tags_json
