"""Load tests against a REAL tritonserver (python backend) over gRPC, plus failure modes.

The server hosts trivial python-backend models created in a temp dir (tests/helpers/echo_models.py):
- echo_text: TEXT (BYTES [1]) -> LABEL (BYTES [1]), PROBABILITIES (FP32 [-1]), like the ensemble;
- echo_tokens: INPUT_IDS, ATTENTION_MASK (INT64 [-1]) -> LOGITS (FP32 [2]), like an engine
  without TOKEN_TYPE_IDS (so it also checks that tokens mode only sends declared inputs);
- slow_text: 20 ms per request, one at a time (~45 req/s): a server to overload.

The server is started by engineforge.serve.server.TritonServer, like in production.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator

import pytest

from engineforge.errors import ConfigError, ModelNotReadyError, ServerUnavailableError
from engineforge.loadtest import cli
from engineforge.loadtest.config import LoadTestConfig
from engineforge.loadtest.records import ERR_UNAVAILABLE
from engineforge.loadtest.report import load_json_report
from engineforge.loadtest.report_files import write_reports
from engineforge.loadtest.runner import run_loadtest
from engineforge.serve.server import TritonServer
from engineforge.serve.triton_env import free_port
from tests.helpers.echo_models import write_repo


@pytest.fixture(scope="module")
def triton(tmp_path_factory) -> Iterator[TritonServer]:
    pytest.importorskip("pytriton")
    root = tmp_path_factory.mktemp("triton")
    repo = write_repo(root / "repo", ("echo_text", "echo_text_b", "echo_tokens", "slow_text"))  # _b: to compare
    with TritonServer(repo, log_file=root / "tritonserver.log") as server:
        yield server


@pytest.mark.triton
def test_text_load_test_at_concurrency_1_and_2(triton, tmp_path):
    config = LoadTestConfig(
        model="echo_text", url=triton.grpc_url, concurrency=(1, 2), duration_s=2.0, warmup_s=0.3, progress_every_s=1.0
    )
    result = run_loadtest(config)
    assert [lv.concurrency for lv in result.levels] == [1, 2]
    for level in result.levels:
        m = level.metrics
        assert m.completed > 0, level
        assert m.errors == 0, m.error_examples
        assert m.latency_p50_ms is not None and 0 < m.latency_p50_ms < 1000
        assert level.cancelled_requests == 0 and level.aborted is None
        assert {r.output for r in level.records if r.ok} <= {"negative", "positive"}
    assert result.model_metadata["name"] == "echo_text"
    assert not result.failed

    paths = write_reports(result, tmp_path)
    report = load_json_report(paths["json"])
    assert [lv["metrics"]["completed"] for lv in report["levels"]] == [lv.metrics.completed for lv in result.levels]
    assert paths["png"].stat().st_size > 0


@pytest.mark.triton
def test_tokens_load_test_with_batches_sends_only_declared_inputs(triton):
    config = LoadTestConfig(
        model="echo_tokens", url=triton.grpc_url, mode="tokens", concurrency=(2,), duration_s=1.0, warmup_s=0.2,
        batch_size=4, seq_len=16, progress_every_s=0,
    )  # fmt: skip
    level = run_loadtest(config).levels[0]
    assert level.metrics.errors == 0, level.metrics.error_examples
    assert level.metrics.completed > 0
    assert level.metrics.throughput_items_per_s == pytest.approx(4 * level.metrics.throughput_rps)
    assert {r.output for r in level.records if r.ok} == {"1"}  # argmax of [16, ~1500]


@pytest.mark.triton
def test_open_loop_rates_over_grpc_write_every_report(triton, tmp_path, capsys):
    out = tmp_path / "open"
    code = cli.main(["--url", triton.grpc_url, "--model", "echo_text", "--rate", "40,80", "--arrival", "poisson",
                     "--duration", "1.5", "--warmup", "0.3", "--out", str(out), "--name", "rates"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = captured.out.strip().splitlines()
    assert table[0].startswith("| rate (req/s) | sent (req/s) | sent on time | limit | requests |")
    assert "| p99.9 ms | max ms |" in table[0]
    report = json.loads((out / "rates.json").read_text())
    assert report["settings"]["rates"] == [40.0, 80.0] and report["settings"]["arrival"] == "poisson"
    for level, rate in zip(report["levels"], (40, 80), strict=True):
        assert level["rate"] == rate and level["schedule"]["arrival"] == "poisson"
        assert level["metrics"]["errors"] == 0 and level["metrics"]["latency_p999_ms"] is not None
        assert level["metrics"]["throughput_rps"] == pytest.approx(rate, rel=0.35)  # Poisson: ~N(rate, rate/1.5)
    assert "Open loop at 40, 80 req/s (poisson arrivals" in (out / "rates.md").read_text()
    page = (out / "rates.html").read_text()  # self-contained: table, Triton's breakdown and four plots inline
    assert page.count("data:image/png;base64,") == 4 and "<h2>Inside Triton</h2>" in page
    assert "latency over time" in page and "`" not in page.split("<body>")[1]
    assert report["server"]["triton_version"] and report["model"]["name"] == "echo_text"
    assert report["settings"]["workers"] == 1 and report["levels"][0]["server"][0]["model"] == "echo_text"
    rows = (out / "rates.csv").read_text().splitlines()
    assert rows[0].startswith("Concurrency,Request Rate,Inferences/Second") and len(rows) == 3
    assert (out / "rates.png").stat().st_size > 0


@pytest.mark.triton
def test_open_loop_throughput_at_3x_capacity_agrees_with_tritons_count_and_names_the_server(triton, tmp_path,
                                                                                           capsys):
    # slow_text answers ~45 req/s (20 ms each, one at a time); offered 150 req/s it must not report 150
    config = LoadTestConfig(model="slow_text", url=triton.grpc_url, rates=(150.0,), duration_s=4.0, warmup_s=1.0,
                            max_in_flight=40, drain_timeout_s=1.0, progress_every_s=0)
    result = run_loadtest(config)
    level = result.levels[0]
    served = next(row for row in level.server if row["model"] == "slow_text")["requests"] / config.duration_s
    m, schedule = level.metrics, level.schedule
    print(f"target 150 req/s: sent {schedule['sent_rps']} req/s, throughput {m.throughput_rps:.1f} req/s, "
          f"Triton counted {served:.1f} req/s; limit {schedule['limit']}: {schedule['shortfall']}")
    assert m.throughput_rps == pytest.approx(served, rel=0.05)  # perf_analyzer's definition: what was answered
    assert m.throughput_rps < 80 and schedule["sent_rps"] < 80  # the cap held sends back to the server's pace
    # the limit hit: 40 slots full of requests queued inside Triton, not the generator (a few % of one core)
    assert schedule["limit"] == "server" and not schedule["kept_rate"]
    assert schedule["shortfall"].startswith("the server was the limit, not the generator")
    assert schedule["evidence"]["server_queue"]["queue_ms"] > 5 * schedule["evidence"]["server_queue"]["compute_ms"]
    write_reports(result, tmp_path, stem="overload", plot=False)
    assert "| 150 | " in (tmp_path / "overload.md").read_text() and "limit server:" in (
        tmp_path / "overload.md").read_text()


@pytest.mark.triton
def test_slo_gates_set_the_exit_code_and_find_max_searches(triton, tmp_path, capsys):
    base = ["--url", triton.grpc_url, "--model", "echo_text", "--concurrency", "1", "--duration", "0.5",
            "--warmup", "0", "--no-plot"]
    assert cli.main([*base, "--slo", "p99<10s,errors<1%", "--out", str(tmp_path / "a"), "--name", "a"]) == 0
    # a passing SLO prints its verdict, and every report stores it
    assert "SLO 'p99<10s,errors<1%' met at every level (1 level; worst p99 " in capsys.readouterr().out
    assert json.loads((tmp_path / "a" / "a.json").read_text())["slo"]["met"] is True
    assert "- SLO `p99<10s,errors<1%` met at every level" in (tmp_path / "a" / "a.md").read_text()
    assert cli.main([*base, "--slo", "p50<0.001ms", "--out", str(tmp_path / "b"), "--name", "b"]) == 1
    assert "SLO p50<0.001ms missed at concurrency 1: p50" in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "b.json").read_text())["slo"]["met"] is False
    assert cli.main([*base, "--slo", "p99<10s", "--find-max", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "highest concurrency meeting the SLO 'p99<10s': 128 (no miss within the probe budget)" in out
    report = json.loads(next((tmp_path / "c").glob("*.json")).read_text())
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert report["slo"]["search"]["best"] == 128
    assert cli.main([*base, "--slo", "p99<0.001ms", "--find-max", "--out", str(tmp_path / "d")]) == 1
    assert "find-max: even concurrency 1 misses the SLO" in capsys.readouterr().err


@pytest.mark.triton
def test_stability_windows_over_grpc(triton, tmp_path, capsys):
    code = cli.main(["--url", triton.grpc_url, "--model", "echo_text", "--concurrency", "1", "--duration", "0.5",
                     "--warmup", "0.2", "--stable", "5", "--stability-tolerance", "0.5", "--out", str(tmp_path),
                     "--no-plot", "--name", "s"])
    assert code == 0, capsys.readouterr().err
    level = json.loads((tmp_path / "s.json").read_text())["levels"][0]
    assert 3 <= level["stability"]["windows"] <= 5 and len(level["stability"]["per_window"]) == level["stability"][
        "windows"]
    assert level["window_s"] == pytest.approx(1.5) and level["metrics"]["errors"] == 0


@pytest.mark.triton
def test_worker_processes_share_an_open_loop_rate_and_a_closed_loop(triton, tmp_path, capsys):
    base = ["--url", triton.grpc_url, "--model", "echo_text", "--duration", "1.5", "--warmup", "0.3",
            "--workers", "2", "--out", str(tmp_path), "--no-plot"]
    assert cli.main([*base, "--rate", "60", "--name", "open"]) == 0, capsys.readouterr().err
    level = json.loads((tmp_path / "open.json").read_text())["levels"][0]
    assert level["workers"] == 2 and level["metrics"]["errors"] == 0
    assert level["schedule"]["scheduled"] == 90 and level["metrics"]["completed"] == 90  # 60/s x 1.5 s, both halves
    assert level["schedule"]["kept_rate"], level["schedule"]
    assert "Generator Processes" in (tmp_path / "open.csv").read_text().splitlines()[0]
    assert cli.main([*base, "--concurrency", "3", "--name", "closed", "--save-records"]) == 0, capsys.readouterr().err
    level = json.loads((tmp_path / "closed.json").read_text())["levels"][0]
    assert level["workers"] == 2 and level["metrics"]["completed"] > 0 and level["metrics"]["errors"] == 0
    records = [json.loads(line) for line in (tmp_path / "closed.records.jsonl").read_text().splitlines()]
    assert {r["worker_id"] for r in records} == {0, 1, 2}  # 2 + 1 coroutines over the two processes
    assert len({r["seq"] for r in records}) == len(records)


@pytest.mark.triton
def test_expected_labels_are_checked_apart_from_latency(triton, tmp_path, capsys):
    texts = tmp_path / "labelled.csv"  # echo_text answers positive for odd-length texts
    texts.write_text("text,label\nab,negative\nabc,negative\nabcd,negative\nabcde,positive\n")
    code = cli.main(["--url", triton.grpc_url, "--model", "echo_text", "--concurrency", "1", "--duration", "1",
                     "--warmup", "0", "--texts-file", str(texts), "--out", str(tmp_path), "--no-plot", "--name", "l"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    m = json.loads((tmp_path / "l.json").read_text())["levels"][0]["metrics"]
    assert m["checked_items"] == m["completed"] > 0 and m["errors"] == 0  # wrong answers are still served
    assert m["accuracy"] == pytest.approx(0.75, abs=1 / m["checked_items"])
    assert "correct %" in captured.out.splitlines()[0]


@pytest.mark.triton
def test_tokens_mode_with_a_length_distribution(triton, tmp_path):
    config = LoadTestConfig(model="echo_tokens", url=triton.grpc_url, mode="tokens", concurrency=(1,), duration_s=1.0,
                            warmup_s=0.0, batch_size=4, seq_len="8-24", progress_every_s=0)
    level = run_loadtest(config).levels[0]
    assert level.metrics.errors == 0, level.metrics.error_examples
    assert level.metrics.completed > 0


@pytest.mark.triton
def test_comparison_of_two_models_writes_one_report_and_each_models_own(triton, tmp_path, capsys):
    code = cli.main(["--url", triton.grpc_url, "--model", "echo_text,echo_text_b", "--concurrency", "1,2",
                     "--duration", "0.5", "--warmup", "0", "--out", str(tmp_path), "--slo", "p99<10s"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = [line for line in captured.out.splitlines() if line.startswith("| echo_text")]
    assert [row.split("|")[1:3] for row in rows] == [[" echo_text ", " 1 "], [" echo_text ", " 2 "],
                                                     [" echo_text_b ", " 1 "], [" echo_text_b ", " 2 "]]
    report = json.loads((tmp_path / "comparison.json").read_text())
    assert report["models"] == ["echo_text", "echo_text_b"]
    assert [r["settings"]["model"] for r in report["reports"]] == ["echo_text", "echo_text_b"]
    assert all(lv["metrics"]["errors"] == 0 for r in report["reports"] for lv in r["levels"])
    assert [[lv["concurrency"] for lv in r["levels"]] for r in report["reports"]] == [[1, 2], [1, 2]]
    assert (tmp_path / "comparison.html").read_text().count("data:image/png;base64,") >= 1
    assert {p.name for p in tmp_path.glob("comparison_echo_text_b.*")} >= {"comparison_echo_text_b.json",
                                                                           "comparison_echo_text_b.csv"}


@pytest.mark.triton
def test_refused_requests_are_counted_by_grpc_status(triton, tmp_path):
    # echo_text takes batches of at most 8: Triton refuses 16 with INVALID_ARGUMENT and stays up
    config = LoadTestConfig(model="echo_text", url=triton.grpc_url, concurrency=(1,), duration_s=0.5, warmup_s=0.0,
                            batch_size=16, progress_every_s=0)
    result = run_loadtest(config)
    m = result.levels[0].metrics
    assert m.completed == 0 and m.errors > 0 and m.errors_by_status == {"INVALID_ARGUMENT": m.errors}
    write_reports(result, tmp_path, stem="refused", plot=False)
    assert f"gRPC status INVALID_ARGUMENT ×{m.errors}" in (tmp_path / "refused.md").read_text()
    ok = run_loadtest(dataclasses.replace(config, batch_size=1)).levels[0].metrics
    assert ok.completed > 0 and ok.errors == 0


@pytest.mark.triton
def test_missing_model_lists_ready_models(triton):
    with pytest.raises(ModelNotReadyError) as info:
        run_loadtest(LoadTestConfig(model="no_such_model", url=triton.grpc_url, duration_s=1.0))
    message = str(info.value)
    assert "'no_such_model'" in message and triton.grpc_url in message
    assert "ready models: echo_text, echo_text_b, echo_tokens, slow_text" in message


@pytest.mark.triton
def test_mode_that_does_not_match_model_inputs_is_a_config_error(triton):
    with pytest.raises(ConfigError, match="use --mode tokens"):
        run_loadtest(LoadTestConfig(model="echo_tokens", url=triton.grpc_url, mode="text", duration_s=1.0))


@pytest.mark.triton
def test_cli_end_to_end(triton, tmp_path, capsys):
    out = tmp_path / "reports"
    code = cli.main(
        ["--url", triton.grpc_url, "--model", "echo_text", "--concurrency", "1", "--duration", "1", "--warmup", "0.2",
         "--batch-size", "2", "--out", str(out), "--name", "run", "--save-records"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = captured.out.strip().splitlines()
    assert table[0].startswith("| concurrency | requests | errors | throughput (req/s) | items/s |")
    assert len(table) == 3
    assert sorted(p.name for p in out.iterdir()) == ["run.csv", "run.html", "run.json", "run.md", "run.png",
                                                         "run.records.jsonl"]
    assert json.loads((out / "run.json").read_text())["settings"]["batch_size"] == 2


def test_no_server_gives_server_unavailable_error():
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailableError) as info:
        run_loadtest(LoadTestConfig(model="echo_text", url=url, duration_s=1.0))
    assert f"no Triton server answers at {url}" in str(info.value)
    assert "`engineforge serve`" in str(info.value)
    assert time.monotonic() - t0 < 10


def test_cli_without_server_exits_1_with_message(capsys, tmp_path):
    url = f"127.0.0.1:{free_port()}"
    assert cli.main(["--url", url, "--model", "m", "--out", str(tmp_path)]) == 1  # a failure, not a usage error
    assert f"engineforge loadtest: error: no Triton server answers at {url}" in capsys.readouterr().err


def test_request_fn_never_raises_when_server_is_gone():
    import asyncio

    from engineforge.loadtest.request_factory import text_request_fn

    async def one():
        fn = text_request_fn("echo_text", url=f"127.0.0.1:{free_port()}", timeout_s=2.0)
        try:
            return await fn(0)
        finally:
            await fn.aclose()

    result = asyncio.run(one())
    assert not result.ok and result.error_kind == ERR_UNAVAILABLE and result.status == "UNAVAILABLE"
    assert "UNAVAILABLE" in result.error
