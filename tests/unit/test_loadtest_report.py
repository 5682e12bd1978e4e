"""Report rendering from hand-made results: JSON round trip, Markdown table, plot, raw records."""

from __future__ import annotations

import dataclasses
import json

import pytest

from engineforge.errors import DataError
from engineforge.loadtest.config import LoadTestConfig
from engineforge.loadtest.metrics import calculate_metrics
from engineforge.loadtest.records import ERR_TIMEOUT, WARMUP, RequestResult
from engineforge.loadtest.report import (
    SCHEMA,
    csv_rows,
    default_stem,
    load_json_report,
    markdown_report,
    markdown_table,
    report_dict,
    write_reports,
)
from engineforge.loadtest.runner import LevelResult, LoadTestResult


def make_level(concurrency: int, latencies_ms: list[float], n_errors: int = 0, batch_size: int = 1) -> LevelResult:
    records = [RequestResult(0.0, ms / 1000, ok=True, batch_size=batch_size) for ms in latencies_ms]
    records += [RequestResult(0.0, 1.0, ok=False, error="[DEADLINE_EXCEEDED] slow", error_kind=ERR_TIMEOUT)] * n_errors
    records.append(RequestResult(0.0, 0.5, ok=True, phase=WARMUP))
    return LevelResult(
        concurrency=concurrency,
        window_s=2.0,
        metrics=calculate_metrics(records, 2.0),
        records=records,
        warmup_requests=1,
        client_cpu_percent=20.0,
    )


@pytest.fixture
def result() -> LoadTestResult:
    config = LoadTestConfig(model="bert/ensemble", concurrency=(1, 4, 8), duration_s=2.0, warmup_s=0.5, label="fp16")
    levels = [
        make_level(1, [1.0, 2.0, 3.0, 4.0]),
        make_level(4, [2.0] * 10, n_errors=2),
        make_level(8, [], n_errors=3),  # nothing succeeded
    ]
    return LoadTestResult(config, levels, "2025-01-01T00:00:00+00:00", "2025-01-01T00:00:09+00:00", {"name": "m"})


def test_markdown_table_has_one_row_per_level(result):
    lines = markdown_table(result).splitlines()
    assert lines[0] == ("| concurrency | requests | errors | throughput (req/s) | p50 ms | p90 ms | p95 ms | p99 ms "
                        "| p99.9 ms | client CPU % |")
    assert set(lines[1]) <= set("|-:")
    rows = lines[2:]
    assert len(rows) == 3
    assert rows[0] == "| 1 | 4 | 0 | 2.0 | 2.00 | 4.00 | 4.00 | 4.00 | 4.00 | 20 |"  # HDR percentiles
    assert rows[1].startswith("| 4 | 12 | 2 | 5.0 | 2.00 |")
    assert rows[2] == "| 8 | 3 | 3 | 0.0 | — | — | — | — | — | 20 |"


def test_markdown_table_adds_items_per_second_for_batches():
    config = LoadTestConfig(model="m", concurrency=(2,), batch_size=4)
    res = LoadTestResult(config, [make_level(2, [1.0] * 6, batch_size=4)], "a", "b")
    lines = markdown_table(res).splitlines()
    assert "items/s" in lines[0]
    assert "| 2 | 6 | 0 | 3.0 | 12.0 |" in lines[2]


def test_json_report_round_trips(result, tmp_path):
    paths = write_reports(result, tmp_path / "out", plot=False)
    loaded = load_json_report(paths["json"])
    assert loaded == json.loads(json.dumps(report_dict(result)))
    assert loaded["schema"] == SCHEMA
    assert loaded["server"] == {"url": "127.0.0.1:8001", "protocol": "grpc", "model": "bert/ensemble",
                                "triton_version": None}
    assert loaded["settings"]["concurrency"] == [1, 4, 8]
    assert "texts" not in loaded["settings"] and loaded["settings"]["n_texts"] > 0
    assert [lv["metrics"]["requests"] for lv in loaded["levels"]] == [4, 12, 3]
    assert loaded["levels"][2]["metrics"]["latency_p50_ms"] is None
    # Rendering from the reloaded JSON gives the same Markdown as from the live result.
    assert markdown_table(loaded) == markdown_table(result)


def test_reports_name_the_server_version_and_the_build_measured(result):
    result.model_metadata = {"name": "bert", "versions": ["3"], "server": {"name": "triton", "version": "2.51.0"},
                             "parameters": {"build_id": "b-42", "precision": "int8", "runtime": "openvino"}}
    report = report_dict(result)
    assert report["server"]["triton_version"] == "2.51.0"
    assert report["model"] == {"name": "bert", "versions": ["3"], "build_id": "b-42", "precision": "int8",
                               "runtime": "openvino", "task": None}
    text = markdown_report(result)
    assert "(gRPC, KServe v2; Triton 2.51.0)" in text
    assert "- Model: versions 3; build id `b-42`; precision `int8`; runtime `openvino`" in text


def test_correctness_gets_a_column_and_a_csv_field(result):
    level = result.levels[0]
    level.metrics = dataclasses.replace(level.metrics, checked_items=4, correct_items=3, accuracy=0.75)
    table = markdown_table(result).splitlines()
    assert table[0].endswith("| client CPU % | correct % |") and table[2].endswith("| 75.00 |")
    assert table[3].endswith("| — |")  # not checked at that level
    rows = csv_rows(result)
    assert rows[0]["Correct %"] == 75.0 and rows[1]["Correct %"] == "" and rows[0]["Generator Processes"] == 1


def test_markdown_report_mentions_settings_and_warnings(result):
    text = markdown_report(result, plot_name="x.png")
    assert text.startswith("# Load test: `bert/ensemble` (fp16)")
    assert "warm-up 0.5 s (discarded)" in text
    assert "## Warnings" in text
    assert "concurrency 4: 2 failed requests (2 timeout)" in text
    assert "![latency and throughput vs concurrency](x.png)" in text


def test_write_reports_writes_json_markdown_plot_and_records(result, tmp_path):
    paths = write_reports(result, tmp_path, records=True)
    assert set(paths) == {"json", "md", "csv", "png", "html", "records"}
    page = paths["html"].read_text()
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 2  # no server stats here
    assert "<th>concurrency</th>" in page and "latency distribution" in page
    assert paths["json"].name == "loadtest_bert-ensemble_fp16_text.json"
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({paths['png'].name})" in paths["md"].read_text()
    lines = paths["records"].read_text().splitlines()
    assert len(lines) == sum(len(lv.records) for lv in result.levels)
    assert {"phase", "latency_s", "ok", "error_kind"} <= set(json.loads(lines[0]))
    import csv

    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["Concurrency"] for r in rows] == ["1", "4", "8"]  # perf_analyzer's columns, latencies in µs
    assert rows[0]["p50 latency"] == "2000" and rows[2]["p99 latency"] == "" and rows[1]["Errors"] == "2"


def test_default_stem_is_file_safe(result):
    assert default_stem(result) == "loadtest_bert-ensemble_fp16_text"


def test_load_json_report_rejects_other_files(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(DataError, match="not an engineforge load-test report"):
        load_json_report(other)
    with pytest.raises(DataError, match="cannot read"):
        load_json_report(tmp_path / "missing.json")
