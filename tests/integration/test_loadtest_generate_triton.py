"""Generate-mode load tests against a REAL tritonserver over gRPC streaming: decoupled python-backend models that
follow the LM serving contract (tests/helpers/stream_models.py: one word per response, 20 ms "prefill", 5 ms per
piece), driven through `engineforge loadtest --mode generate`, closed and open loop, every report file checked
against what the model streamed."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

import pytest

from engineforge.loadtest import cli
from engineforge.loadtest.config import LoadTestConfig
from engineforge.loadtest.generate_html import write_generate_reports
from engineforge.loadtest.generate_metrics import generation_metrics
from engineforge.loadtest.generate_records import GenerationRecord
from engineforge.loadtest.generate_report import generate_report_dict
from engineforge.loadtest.prompts import request_plan
from engineforge.loadtest.records import MEASURE
from engineforge.loadtest.runner import run_loadtest
from engineforge.serve.server import TritonServer
from tests.helpers.stream_models import expected_tokens, write_stream_repo

PROMPTS = ["the quick brown fox", "streaming responses arrive one by one", "a", "numbers people believe in tokens"]
EXTS = ("json", "md", "csv", "png", "html")


@pytest.fixture(scope="module")
def triton(tmp_path_factory) -> Iterator[TritonServer]:
    pytest.importorskip("pytriton")
    root = tmp_path_factory.mktemp("triton")
    with TritonServer(write_stream_repo(root / "repo"), log_file=root / "tritonserver.log") as server:
        yield server


def _check_records_match_the_stream(result, config: LoadTestConfig) -> None:
    """Every successful record holds exactly what stream_words streamed for its prompt and MAX_TOKENS."""
    plan = request_plan(config.prompts, config.prompt_len, config.max_tokens)
    for level in result.levels:
        for r in level.records:
            assert isinstance(r, GenerationRecord) and r.ok, r.error
            request = plan[r.plan_index]
            assert r.streamed_tokens == r.output_tokens == expected_tokens(request.prompt, request.max_tokens)
            assert r.start_s < r.first_token_s <= r.piece_s[-1] <= r.end_s
            assert r.first_token_s - r.start_s >= 0.02  # the model's prefill


@pytest.mark.triton
def test_closed_loop_generate_run_writes_every_report(triton, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "out"
    rc = cli.main(["--model", "stream_words", "--url", triton.grpc_url, "--mode", "generate", "--concurrency", "1,3",
                   "--duration", "1.5", "--warmup", "0.3", "--prompts", str(prompts), "--max-tokens", "3,50",
                   "--out", str(out), "--name", "gen", "--progress-every", "0.5"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"gen.{ext}" for ext in EXTS)
    report = json.loads((out / "gen.json").read_text())
    assert report["settings"]["mode"] == "generate" and report["settings"]["n_prompts"] == len(PROMPTS)
    for level in report["levels"]:
        g = level["generation"]
        assert g["completed"] > 5 and g["errors"] == 0 and g["token_count_mismatch"] == 0
        assert 20 <= g["ttft_ms"]["p50"] < g["e2e_ms"]["p50"] < 1000
        assert 4 <= g["itl_ms"]["p50"] < 100 and g["piece_gap_ms"]["count"] > 0
        assert set(g["finish_reasons"]) <= {"eos", "length"} and g["finish_reasons"].get("length", 0) > 0
        assert g["prompt_tokens"]["max"] == 6 and g["prompt_tokens"]["min"] == 1  # words, as the model counts
        assert g["output_tokens_per_s"] == pytest.approx(g["output_tokens_total"] / level["window_s"])
    assert report["levels"][1]["generation"]["requests_per_s"] > report["levels"][0]["generation"]["requests_per_s"]
    with (out / "gen.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(lv["metrics"]["requests"] + lv["warmup_requests"] + lv["drained_requests"]
                            for lv in report["levels"])
    assert all(float(r["ttft_ms"]) < float(r["e2e_ms"]) for r in rows)
    text = (out / "gen.md").read_text()
    assert "## Time to first token (ms)" in text and "## Inter-token latency per request (ms)" in text
    assert (out / "gen.html").read_text().count("data:image/png;base64,") == 2


@pytest.mark.triton
def test_open_loop_generate_with_an_empty_final_response(triton, tmp_path, caplog):
    config = LoadTestConfig(model="stream_words_empty_final", url=triton.grpc_url, mode="generate", rates=(8.0,),
                            duration_s=1.5, warmup_s=0.3, prompt_len="3-9", max_tokens="2-12", progress_every_s=0.6)
    with caplog.at_level("INFO", logger="engineforge"):
        result = run_loadtest(config)
    assert any("answered in the window" in m and "tok/s" in m for m in caplog.messages)  # progress shows tokens
    _check_records_match_the_stream(result, config)
    g = generate_report_dict(result)["levels"][0]["generation"]
    assert g["latency_from"] == "scheduled send" and g["errors"] == 0 and g["completed"] >= 8
    assert g["finish_reasons"] == {"not reported": g["requests"]}  # the empty final response carries none
    assert g["prompt_tokens"] is None  # not sent: undefined, not 0
    measured = [r for r in result.levels[0].records if r.phase == MEASURE]
    assert g["output_tokens"]["max"] == max(r.streamed_tokens for r in measured)
    paths = write_generate_reports(result, tmp_path, stem="open")
    assert {p.suffix for p in paths.values()} == {f".{ext}" for ext in EXTS}


@pytest.mark.triton
def test_worker_processes_records_match_the_stream_and_timeouts_are_counted(triton, tmp_path):
    # two generator processes: records travel back through pipes and still match the stream
    config = LoadTestConfig(model="stream_words", url=triton.grpc_url, mode="generate", concurrency=(2,),
                            duration_s=1.0, warmup_s=0.2, prompt_len="2-8", max_tokens=None, progress_every_s=0,
                            workers=2)
    result = run_loadtest(config)
    assert result.levels[0].workers == 2 and result.levels[0].metrics.completed > 5
    _check_records_match_the_stream(result, config)
    # 30 ms cannot cover the 20 ms prefill plus 5 ms per word of a 60-word prompt: every request times out
    rc = cli.main(["--model", "stream_words", "--url", triton.grpc_url, "--mode", "generate", "--concurrency", "2",
                   "--duration", "0.6", "--warmup", "0", "--prompt-len", "60", "--max-tokens", "none",
                   "--timeout", "0.03", "--out", str(tmp_path), "--name", "late", "--no-plot"])
    assert rc == 1
    g = json.loads((tmp_path / "late.json").read_text())["levels"][0]["generation"]
    assert g["completed"] == 0 and g["errors"] > 0 and g["errors_by_kind"] == {"timeout": g["errors"]}
    assert g["ttft_ms"] is None and g["output_tokens_per_s"] == 0.0
    assert "| concurrency 2 | — |" in (tmp_path / "late.md").read_text()


@pytest.mark.triton
def test_a_stream_failing_midway_is_a_counted_server_error(triton):
    config = LoadTestConfig(model="stream_words", url=triton.grpc_url, mode="generate", concurrency=(1,),
                            duration_s=0.8, warmup_s=0.0, prompts=("all is well here", "this will FAIL soon"),
                            max_tokens=None, progress_every_s=0)
    level = run_loadtest(config).levels[0]
    g = generation_metrics(level.records, level.window_s).to_dict()
    assert g["completed"] > 2 and g["errors"] > 2 and g["errors_by_kind"] == {"server_error": g["errors"]}
    assert "generation failed on FAIL" in g["error_examples"][0]
    assert g["output_tokens"]["max"] == g["output_tokens"]["min"] == 4  # the failed streams' 2 tokens are left out
    failed = [r for r in level.records if not r.ok]
    assert all(r.streamed_tokens == 2 and r.finish_reason == "error" for r in failed)  # "this will" came back
