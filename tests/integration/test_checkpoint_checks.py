"""The checkpoint check before any work: a tokenizer that emits ids beyond the embedding table is refused by name
(it used to fail in export with `IndexError: index out of range in self`), and transformers' LOAD REPORT goes
to build.log while the console gets one line where it matters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engineforge import progress
from engineforge.build.checkpoint import load_checkpoint
from engineforge.build.cli import main as build_engine
from engineforge.errors import CheckpointError
from tests.helpers.tiny_checkpoint import write_eval_data
from tests.helpers.tiny_families import (
    FAMILY_CONFIGS,
    make_embedding_checkpoint,
    make_family_checkpoint,
    word_vocabulary,
    write_pairs,
)

# "example" is in the export step's sample text: an added token there made export index past the table.
ADDED = ["example", "[ORDER_ID]"]


def _add_tokens(checkpoint: Path) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    assert tokenizer.add_tokens(ADDED) == 2
    tokenizer.save_pretrained(str(checkpoint))
    return checkpoint


def _drop_weights(checkpoint: Path, prefix: str) -> Path:
    from safetensors.torch import load_file, save_file

    weights = load_file(checkpoint / "model.safetensors")
    kept = {k: v for k, v in weights.items() if not k.startswith(prefix)}
    assert len(kept) < len(weights)
    save_file(kept, checkpoint / "model.safetensors", metadata={"format": "pt"})
    return checkpoint


def test_build_refuses_tokenizer_ids_beyond_the_embedding_table_before_any_work(tmp_path, capsys):
    checkpoint = make_family_checkpoint(tmp_path / "ckpt", "bert")
    data = write_eval_data(tmp_path / "eval.jsonl", checkpoint)
    _add_tokens(checkpoint)
    rows = len(word_vocabulary())
    out = tmp_path / "out"
    assert build_engine([str(checkpoint), "--eval-data", str(data), "--preset", "fp32", "--no-publish",
                         "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{rows} ('example'), {rows + 1} ('[ORDER_ID]')" in err and f"has {rows} rows" in err
    assert "resize_token_embeddings(len(tokenizer))" in err and "IndexError" not in err
    assert not out.exists()  # refused before any work: nothing written


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_every_family_compares_the_tokenizer_with_its_embedding_rows(tmp_path, model_type):
    checkpoint = make_family_checkpoint(tmp_path / "ckpt", model_type, steps=0)
    info, model, tokenizer = load_checkpoint(checkpoint)  # the checkpoint's own tokenizer fits
    rows = model.get_input_embeddings().num_embeddings
    assert rows == info.vocab_size == len(word_vocabulary()) > max(tokenizer.get_vocab().values())
    with pytest.raises(CheckpointError, match=rf"{rows} \('example'\), {rows + 1} \('\[ORDER_ID\]'\)"):
        load_checkpoint(_add_tokens(checkpoint))


def test_embedding_build_keeps_the_load_report_in_build_log(tmp_path):
    """A sentence-transformers checkpoint without pooler weights: transformers prints a MISSING table for the
    pooler, which the engine never runs. A fresh process, as `build-engine` is: transformers installs its stderr
    handler when first imported, inside the build."""
    checkpoint = _drop_weights(make_embedding_checkpoint(tmp_path / "st", "bert"), "pooler.")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "engineforge.build.cli", str(checkpoint), "--eval-data",
                          str(write_pairs(tmp_path / "pairs.jsonl")), "--preset", "fp32", "--no-publish",
                          "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    console = run.stdout + run.stderr
    assert "LOAD REPORT" not in console and "MISSING" not in console and "pooler" not in console
    assert "[engineforge]   BertModel (bert, embeddings), embeddings, mean pooling + L2 normalize" in run.stderr
    log = (out / "build.log").read_text()
    assert "BertModel LOAD REPORT from:" in log and "pooler.dense.weight | MISSING" in log


def test_a_classifier_without_its_head_says_so_in_one_line(tmp_path, capfd):
    checkpoint = make_family_checkpoint(tmp_path / "ckpt", "bert", steps=0)
    _drop_weights(checkpoint, "classifier.")
    with progress.third_party_logs_to(tmp_path / "build.log"):
        load_checkpoint(checkpoint)
    err = capfd.readouterr().err
    assert ("[engineforge]   classifier.* not in model.safetensors: initialised at random, so the engine computes "
            "with untrained weights there") in err
    assert "LOAD REPORT" not in err and "classifier.weight" in (tmp_path / "build.log").read_text()
