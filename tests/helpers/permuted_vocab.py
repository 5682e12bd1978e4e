"""A bundle that answers exactly like another through its own tokenizer, but with different token ids: some words'
ids are swapped in the tokenizer and the matching rows of the word-embedding matrix are swapped in the ONNX
engine. Alone, each version gives the same answers; a tokenizer of one version feeding the engine of the other
gives different ones. That is how a mix of versions during a swap becomes visible in the answers themselves."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def permute_vocabulary(source: Path, target: Path, words: Sequence[str], build_id: str) -> dict[str, tuple[int, int]]:
    """Copy `source` to `target` with each word's id swapped with another ordinary token's; returns the swaps."""
    import onnx
    from onnx import numpy_helper

    from engineforge.engines.engine_spec import EngineSpec

    shutil.copytree(source, target)
    tokenizer_json = target / "tokenizer" / "tokenizer.json"
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab: dict[str, int] = data["model"]["vocab"]
    by_id = {i: token for token, i in vocab.items()}
    swaps = {}
    for offset, word in enumerate(words):
        a = vocab[word]
        b = next(i for i in range(5000 + 37 * offset, len(by_id)) if by_id[i].isalpha() and by_id[i] not in words
                 and i not in {x for pair in swaps.values() for x in pair})
        vocab[word], vocab[by_id[b]] = b, a
        by_id[a], by_id[b] = by_id[b], word
        swaps[word] = (a, b)
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    vocab_txt = target / "tokenizer" / "vocab.txt"
    if vocab_txt.is_file():
        vocab_txt.write_text("".join(by_id[i] + "\n" for i in range(len(by_id))), encoding="utf-8")
    model = onnx.load(str(target / "model.onnx"))
    spec = EngineSpec.load(target)
    (embedding,) = [t for t in model.graph.initializer if list(t.dims)[:1] == [spec.vocab_size] and len(t.dims) == 2]
    rows = numpy_helper.to_array(embedding).copy()
    for a, b in swaps.values():
        rows[[a, b]] = rows[[b, a]]
    embedding.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(rows), embedding.name))
    onnx.save(model, str(target / "model.onnx"))
    EngineSpec.from_dict(spec.to_dict() | {"build_id": build_id}).save(target)
    return swaps
