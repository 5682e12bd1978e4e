"""Report rendering from hand-made results: JSON round trip, Markdown table, plot, raw records."""

from __future__ import annotations

import dataclasses
import json

import pytest

from engineforge.errors import DataError
from engineforge.loadtest.config import LoadTestConfig
from engineforge.loadtest.markdown_report import markdown_report, markdown_table
from engineforge.loadtest.metrics import calculate_metrics
from engineforge.loadtest.records import ERR_TIMEOUT, WARMUP, RequestResult
from engineforge.loadtest.report import SCHEMA, csv_rows, default_stem, load_json_report, report_dict
from engineforge.loadtest.report_files import write_reports
from engineforge.loadtest.results import LevelResult, LoadTestResult


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
                        "| p99.9 ms | max ms | client CPU % |")
    assert set(lines[1]) <= set("|-:")
    rows = lines[2:]
    assert len(rows) == 3
    assert rows[0] == "| 1 | 4 | 0 | 2.0 | 2.00 | 4.00 | 4.00 | 4.00 | 4.00 | 4.00 | 20 |"  # HDR percentiles, exact max
    assert rows[1].startswith("| 4 | 12 | 2 | 5.0 | 2.00 |")
    assert rows[2] == "| 8 | 3 | 3 | 0.0 | — | — | — | — | — | — | 20 |"


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
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 3  # no server stats here
    assert "<th>concurrency</th>" in page and "latency distribution" in page and "latency over time" in page
    assert "<th>max ms</th>" in page
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
    assert rows[0]["Max latency"] == "4000" and rows[2]["Max latency"] == ""


def test_default_stem_is_file_safe(result):
    assert default_stem(result) == "loadtest_bert-ensemble_fp16_text"


def test_load_json_report_rejects_other_files(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(DataError, match="not an engineforge load-test report"):
        load_json_report(other)
    with pytest.raises(DataError, match="cannot read"):
        load_json_report(tmp_path / "missing.json")


def test_html_renders_code_spans_and_carries_the_warnings(result, tmp_path):
    from engineforge.loadtest.html_report import html_report

    page = html_report(report_dict(result))
    body = page.split("<body>", 1)[1]
    assert "`" not in body  # Markdown code spans become <code>, never literal backticks
    assert "<code>127.0.0.1:8001</code>" in body and "<h2>Warnings</h2>" in body
    assert "<code>[DEADLINE_EXCEEDED] slow</code>" in body


def test_a_closed_loop_stall_shows_in_the_max_column_and_the_latency_over_time_plot(tmp_path):
    from engineforge.loadtest.report import latency_timeline

    # 500 answers of 2 ms, one of 400 ms in the middle: p99 hides it, the max and the time line show it
    records = [RequestResult(i * 0.002, 0.4 if i == 250 else 0.002, ok=True) for i in range(500)]
    level = LevelResult(concurrency=1, window_s=1.0, metrics=calculate_metrics(records, 1.0), records=records)
    res = LoadTestResult(LoadTestConfig(model="m", concurrency=(1,)), [level], "a", "b")
    row = markdown_table(res).splitlines()[2].split(" | ")
    assert row[7] == "2.00" and row[9] == "400.00"  # p99 | p99.9 | max
    assert csv_rows(res)[0]["Max latency"] == "400000"
    series = latency_timeline(res)["concurrency 1"]
    assert max(series["ms"]) == pytest.approx(400.0) and series["t_s"][series["ms"].index(max(series["ms"]))] == \
        pytest.approx(0.5)
    assert "latency over time" in write_reports(res, tmp_path)["html"].read_text()


def test_open_loop_tables_give_the_sent_rate_and_the_limit_beside_the_throughput(tmp_path):
    config = LoadTestConfig(model="m", rates=(300.0,))
    records = [RequestResult(0.0, 0.01, ok=True)] * 100
    schedule = {"target_rps": 300.0, "sent_rps": 290.0, "kept_rate": True, "limit": "server",
                "shortfall": "sent on time, but the server answered 100.0 req/s of the 290.0 req/s sent"}
    level = LevelResult(concurrency=0, window_s=1.0, metrics=calculate_metrics(records, 1.0), records=records,
                        rate=300.0, schedule=schedule)
    res = LoadTestResult(config, [level], "a", "b")
    lines = markdown_table(res).splitlines()
    assert lines[0].startswith("| rate (req/s) | sent (req/s) | sent on time | limit | requests | errors | "
                               "throughput (req/s) |")
    assert lines[2].startswith("| 300 | 290.0 | yes | server | 100 | 0 | 100.0 |")
    row = csv_rows(res)[0]
    assert row["Request Rate"] == 300.0 and row["Sent Requests/Second"] == 290.0 and row["Requests/Second"] == 100.0
    assert row["Limit"] == "server"
    assert "- rate 300 req/s: limit server: sent on time, but the server answered 100.0" in markdown_report(res)


def test_a_passing_slo_is_stored_in_every_report(result, tmp_path):
    from engineforge.loadtest.slo import parse_slo, verdict, verdict_line

    levels = [level.to_dict() for level in result.levels[:2]]
    result.levels = result.levels[:2]
    result.slo = verdict(parse_slo("p99<50ms,errors<20%"), levels, "p99<50ms,errors<20%")
    assert result.slo["met"] and result.slo["missed"] == []
    line = verdict_line(result.slo)
    assert line.startswith("SLO 'p99<50ms,errors<20%' met at every level (2 levels; worst p99 4.00 ms at "
                           "concurrency 1; worst errors 16.67% at concurrency 4)")
    paths = write_reports(result, tmp_path)
    assert load_json_report(paths["json"])["slo"]["met"] is True
    text = paths["md"].read_text()
    assert "## SLO" in text and "- SLO `p99<50ms,errors<20%` met at every level" in text
    assert "- concurrency 4: met — p99 2.00 ms, errors 16.67%" in text
    page = paths["html"].read_text()
    assert "<h2>SLO</h2>" in page and "<code>p99&lt;50ms,errors&lt;20%</code> met at every level" in page
