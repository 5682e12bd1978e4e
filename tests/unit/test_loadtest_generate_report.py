"""Generate-mode reports from hand-made results: every file written, undefined values shown as such, one CSV row per
request."""

from __future__ import annotations

import csv
import json

import pytest

from engineforge.loadtest.config import LoadTestConfig
from engineforge.loadtest.generate_html import write_generate_reports
from engineforge.loadtest.generate_records import GenerationRecord
from engineforge.loadtest.generate_report import generate_markdown, generate_report_dict
from engineforge.loadtest.metrics import calculate_metrics
from engineforge.loadtest.records import WARMUP
from engineforge.loadtest.results import LevelResult, LoadTestResult


def level(concurrency: int, records: list[GenerationRecord]) -> LevelResult:
    return LevelResult(concurrency=concurrency, window_s=1.0, metrics=calculate_metrics(records, 1.0), records=records)


def result() -> LoadTestResult:
    ok = [GenerationRecord(start_s=t, latency_s=0.3, ok=True, piece_s=(t + 0.1, t + 0.2), piece_tokens=(1, 2),
                           output_tokens=3, prompt_tokens=5, finish_reason="length", seq=i)
          for i, t in enumerate((0.0, 0.4))]
    warm = GenerationRecord(start_s=-1.0, latency_s=0.1, ok=True, piece_s=(-0.95,), piece_tokens=(1,),
                            output_tokens=1, phase=WARMUP)
    failed = [GenerationRecord(start_s=2.0, latency_s=1.0, ok=False, error="deadline", error_kind="timeout",
                               finish_reason="error")]
    config = LoadTestConfig(model="lm", mode="generate", concurrency=(1, 2))
    return LoadTestResult(config, [level(1, [warm, *ok]), level(2, failed)], "t0", "t1")


def test_every_file_is_written_with_one_csv_row_per_request(tmp_path):
    paths = write_generate_reports(result(), tmp_path, records=True)
    assert {p.name for p in paths.values()} == {f"loadtest_lm_generate.{ext}" for ext in ("json", "md", "csv", "png",
                                                                                         "html", "records.jsonl")}
    raw = [json.loads(line) for line in paths["records"].read_text().splitlines()]
    assert len(raw) == 4 and raw[1]["piece_tokens"] == [1, 2] and raw[1]["finish_reason"] == "length"
    report = json.loads(paths["json"].read_text())
    first, second = (lv["generation"] for lv in report["levels"])
    assert first["completed"] == 2 and first["output_tokens_total"] == 6
    assert first["ttft_ms"]["mean"] == pytest.approx(100.0)
    assert second["ttft_ms"] is None and second["errors_by_kind"] == {"timeout": 1}
    assert "ttft" in report["definitions"]
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and [r["phase"] for r in rows].count("warmup") == 1
    assert rows[0]["ttft_ms"] == "50.0" and rows[-1]["ttft_ms"] == "" and rows[-1]["error_kind"] == "timeout"
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "Time to first token" in page


def test_markdown_shows_undefined_values_as_dashes_not_zeros():
    text = generate_markdown(generate_report_dict(result()))
    ttft = text.split("## Time to first token (ms)")[1].split("##")[0]
    assert "| concurrency 2 | — | — |" in ttft
    assert "| concurrency 1 | 2 | 100.00 | 100.00 |" in ttft
    assert "finish: length" in text and "error: timeout" in text and "## Definitions" in text
    assert "1 failed requests" in text  # the shared warnings name the failures
