"""The demo's fine-tune adds a classification head, which transformers reports as a MISSING table: that table
(and its progress bars) goes to finetune.log beside the checkpoint; the console gets one line. While it trains,
progress lines give the steps done, the rate and the time left."""

from __future__ import annotations

import re

from engineforge.build.checkpoint import load_checkpoint
from engineforge.demo import finetune as finetune_module
from engineforge.demo.finetune import FINETUNE_LOG, FinetuneSettings, finetune
from engineforge.demo.ner_finetune import NerFinetuneSettings, prepare_ner_checkpoint
from tests.helpers.tiny_families import make_embedding_checkpoint


def progress_lines(err: str, total: int, epochs: int) -> list[re.Match]:
    """The fine-tuning progress lines of `err`, each checked for steps done/total, rate and time left."""
    found = [re.fullmatch(rf"\[engineforge\]   fine-tuning (\d+)/{total} steps, \d+\.\d\d steps/s, \d+(\.\d)? "
                          rf"(s|min) left, epoch \d+/{epochs}, train loss \d+\.\d+", line)
             for line in err.splitlines() if "steps/s" in line]
    assert found and all(found), err
    return found


def test_demo_finetune_prints_one_line_for_the_new_head(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(finetune_module, "PROGRESS_EVERY_S", 0.0)  # a line every step (default: every 10 s)
    base = make_embedding_checkpoint(tmp_path / "base", "bert")  # a bare encoder, as all-MiniLM-L6-v2 is
    capfd.readouterr()
    out = tmp_path / "demo-checkpoint"
    report = finetune(out, FinetuneSettings(epochs=1, batch_size=64, max_length=16), base=base)
    captured = capfd.readouterr()
    console = captured.out + captured.err
    assert (f"[engineforge] classification head initialised for fine-tuning (classifier.* new; transformers' "
            f"load report in {out / FINETUNE_LOG})") in captured.err
    for noise in ("LOAD REPORT", "MISSING", "Loading weights", "Writing model shards"):
        assert noise not in console
    # 480 examples in batches of 64: 8 steps, each reported here.
    assert [int(m.group(1)) for m in progress_lines(captured.err, 8, 1)] == list(range(1, 9))
    log = (out / FINETUNE_LOG).read_text()
    assert "BertForSequenceClassification LOAD REPORT" in log and "classifier.weight | MISSING" in log
    assert report["base_model"] == str(base) and len(report["labels"]) == 8
    # The result is a complete classifier: loading it for a build initialises nothing.
    capfd.readouterr()
    info, _, _ = load_checkpoint(out)
    assert len(info.labels) == 8 and "initialised at random" not in capfd.readouterr().err


def test_ner_demo_finetune_prints_one_line_for_the_new_head(tmp_path, capfd):
    base = make_embedding_checkpoint(tmp_path / "base", "bert")
    capfd.readouterr()
    out = tmp_path / "ner-checkpoint"
    report = prepare_ner_checkpoint(out, NerFinetuneSettings(epochs=1, batch_size=64, max_length=16), base=base)
    captured = capfd.readouterr()
    assert (f"[engineforge] token-classification head initialised for fine-tuning (classifier.* new; "
            f"transformers' load report in {out / FINETUNE_LOG})") in captured.err
    for noise in ("LOAD REPORT", "MISSING", "Loading weights", "Writing model shards"):
        assert noise not in captured.out + captured.err
    # 630 messages in batches of 64: 10 steps; the default reports every 10 s, and always after the last step.
    assert progress_lines(captured.err, 10, 1)[-1].group(1) == "10"
    assert "BertForTokenClassification LOAD REPORT" in (out / FINETUNE_LOG).read_text()
    assert report["base_model"] == str(base) and (out / "training_report.json").is_file()
