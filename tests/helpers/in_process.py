"""A bundle's engine run in this process exactly as the served engine model opens it, one text at a time (no
padding, no Triton): what served answers are compared against."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def outputs_one_by_one(bundle: Path, texts: list[str]) -> np.ndarray:
    """The engine's raw output row for each text alone (logits, or an embedding)."""
    from transformers import AutoTokenizer

    from engineforge.engines.engine_spec import EngineSpec
    from engineforge.serve import engine_runtime as rt

    spec = EngineSpec.load(bundle)
    engine = rt.open_bundle_engine(bundle, spec)
    tokenizer = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))
    rows = []
    for text in texts:
        encoded = tokenizer([text], truncation=True, max_length=spec.max_sequence_length, return_tensors="np")
        rows.append(np.asarray(engine.run({n: encoded[n].astype(np.int64) for n in spec.input_names}),
                               dtype=np.float32)[0])
    return np.array(rows)


def probabilities_one_by_one(bundle: Path, texts: list[str]) -> np.ndarray:
    from engineforge.serve.engine_runtime import softmax

    return softmax(outputs_one_by_one(bundle, texts))


def entities_in_process(bundle: Path, texts: list[str]) -> tuple[list[dict], list[list[str]]]:
    """A token classifier bundle's ENTITIES (by strategy) and TOKEN_LABELS for `texts` as one request, computed
    in this process the way the served tokenizer and engine models compute them."""
    import json

    from engineforge.engines.engine_spec import EngineSpec
    from engineforge.engines.tokenize_runtime import load_tokenizer, tokenize_batch
    from engineforge.serve import engine_runtime as rt
    from engineforge.serve.ner_runtime import tagged_outputs

    spec = EngineSpec.load(bundle)
    arrays = tokenize_batch(load_tokenizer(bundle / "tokenizer"), texts, spec.max_sequence_length, with_offsets=True)
    request = rt.RequestArrays(arrays["input_ids"], arrays["attention_mask"], arrays.get("token_type_ids"))
    (rows,) = rt.run_batch(rt.open_bundle_engine(bundle, spec), spec, [request])
    entities, tags = tagged_outputs(rows, spec.labels, arrays["attention_mask"], arrays["offsets"],
                                    arrays["word_ids"], texts)
    return [json.loads(e) for e in entities], [json.loads(t) for t in tags]
