"""Closed-loop runner logic, driven by fake async request functions (no server)."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import pytest

from engineforge.errors import ConfigError
from engineforge.loadtest.closed_loop import run_level
from engineforge.loadtest.config import LoadTestConfig
from engineforge.loadtest.metrics import calculate_metrics
from engineforge.loadtest.records import DRAIN, ERR_CLIENT, MEASURE, WARMUP, RequestResult, clock, failure
from engineforge.loadtest.results import LevelResult
from engineforge.loadtest.runner import run_loadtest

QUIET = {"progress_every_s": 0, "log": lambda _msg: None}


def sleeper(seconds: float = 0.01):
    async def fn(seq: int) -> RequestResult:
        start = clock()
        await asyncio.sleep(seconds)
        return RequestResult(start_s=start, latency_s=clock() - start, ok=True, output=str(seq))

    return fn


def level(fn, concurrency: int, duration: float, warmup: float = 0.0, **kwargs) -> LevelResult:
    # The outer wait_for keeps a runner bug from hanging the test suite.
    coro = run_level(fn, concurrency, duration, warmup, **{**QUIET, **kwargs})
    return asyncio.run(asyncio.wait_for(coro, timeout=duration + warmup + 10))


def test_concurrency_scales_closed_loop_throughput():
    one = level(sleeper(0.01), concurrency=1, duration=0.5)
    four = level(sleeper(0.01), concurrency=4, duration=0.5)
    assert one.metrics.completed >= 20  # ~45 expected at 10 ms per request
    ratio = four.metrics.completed / one.metrics.completed
    assert 2.5 <= ratio <= 4.5, ratio
    assert {r.worker_id for r in four.records} == {0, 1, 2, 3}
    assert all(r.concurrency == 4 for r in four.records)
    assert four.metrics.errors == 0


def test_warmup_records_are_excluded_from_metrics():
    result = level(sleeper(0.01), concurrency=2, duration=0.3, warmup=0.2)
    warm = [r for r in result.records if r.phase == WARMUP]
    measured = [r for r in result.records if r.phase == MEASURE]
    assert warm and measured
    assert result.warmup_requests == len(warm)
    assert result.metrics.requests == len(measured) < len(result.records)
    assert max(r.end_s for r in warm) <= min(r.end_s for r in measured)
    assert result.metrics == calculate_metrics(measured, 0.3)
    assert result.window_s == 0.3


def test_sequence_numbers_are_unique_per_level():
    result = level(sleeper(0.005), concurrency=3, duration=0.2)
    seqs = [r.seq for r in result.records]
    assert len(seqs) == len(set(seqs)) and min(seqs) == 0


def test_exceptions_and_bad_return_values_never_escape():
    async def flaky(seq: int):
        await asyncio.sleep(0.002)
        if seq % 3 == 0:
            raise ValueError("boom")
        if seq % 3 == 1:
            return None  # not a RequestResult: a broken request function
        return RequestResult(start_s=clock(), latency_s=0.002, ok=True)

    result = level(flaky, concurrency=2, duration=0.3)
    m = result.metrics
    assert m.completed > 0 and m.errors > 0
    assert m.errors_by_kind == {ERR_CLIENT: m.errors}
    errors = [r.error for r in result.records if not r.ok]
    assert any("ValueError: boom" in e for e in errors)
    assert any("returned NoneType" in e for e in errors)


def test_stops_by_duration_even_if_requests_hang():
    async def hang(seq: int) -> RequestResult:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    t0 = time.perf_counter()
    result = level(hang, concurrency=3, duration=0.2, warmup=0.1, drain_timeout_s=0.2)
    assert time.perf_counter() - t0 < 1.5
    assert result.cancelled_requests == 3
    assert result.metrics.requests == 0 and result.metrics.error_rate is None


def test_requests_in_flight_at_window_end_are_drained_not_counted():
    result = level(sleeper(0.15), concurrency=2, duration=0.2, drain_timeout_s=1.0)
    drained = [r for r in result.records if r.phase == DRAIN]
    assert result.drained_requests == len(drained) == 2
    assert result.cancelled_requests == 0
    assert result.metrics.requests == 2  # one per worker completed at ~0.15 s


def test_aborts_after_consecutive_errors_and_skips_remaining_levels():
    async def refused(seq: int) -> RequestResult:
        await asyncio.sleep(0)
        return failure(clock(), "[StatusCode.UNAVAILABLE] connection refused", "unavailable")

    t0 = time.perf_counter()
    config = LoadTestConfig(model="m", concurrency=(1, 2), duration_s=5.0, warmup_s=0.0, max_consecutive_errors=50,
                            progress_every_s=0)
    levels = run_loadtest(config, refused).levels
    assert time.perf_counter() - t0 < 2.0
    assert len(levels) == 1
    assert "50 consecutive failed requests" in levels[0].aborted
    assert "connection refused" in levels[0].aborted


def test_progress_lines_are_logged():
    lines: list[str] = []
    level(sleeper(0.01), concurrency=1, duration=0.35, progress_every_s=0.1, log=lines.append)
    assert lines[0].startswith("concurrency 1: warm-up")
    assert any("req/s" in line and "requests" in line for line in lines[1:-1])
    assert "ok, 0 errors" in lines[-1]


def test_client_cpu_is_reported():
    result = level(sleeper(0.01), concurrency=1, duration=0.2)
    assert result.client_cpu_percent is not None and result.client_cpu_percent >= 0


@pytest.mark.parametrize("concurrency, duration, warmup", [(0, 1.0, 0.0), (1, 0.0, 0.0), (1, 1.0, -1.0)])
def test_bad_level_settings_are_rejected(concurrency, duration, warmup):
    with pytest.raises(ConfigError):
        asyncio.run(run_level(sleeper(), concurrency, duration, warmup, **QUIET))


def test_run_loadtest_with_custom_request_fn_runs_every_level():
    # A 1 s window: a 0.2 s one saw no completion once in CI when the 2 cores were busy for that long.
    config = LoadTestConfig(model="fake", concurrency=(1, 2), duration_s=1.0, warmup_s=0.05, progress_every_s=0)
    result = run_loadtest(config, request_fn=sleeper(0.005))
    assert [lv.concurrency for lv in result.levels] == [1, 2]
    assert all(lv.metrics.completed > 0 for lv in result.levels)
    assert not result.failed
    assert result.started_at <= result.finished_at


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"concurrency": (1, 0)}, "concurrency"),
        ({"mode": "images"}, "mode"),
        ({"duration_s": 0}, "duration"),
        ({"batch_size": 0}, "batch size"),
        ({"model": ""}, "model"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        LoadTestConfig(**{"model": "m", **changes})


class _RecordingClient:
    """Stands in for tritonclient's asyncio client: remembers how it was opened and what it was asked."""

    opened: ClassVar[list[_RecordingClient]] = []

    def __init__(self, url: str, ssl: bool = False, root_certificates: str | None = None, **_options) -> None:
        self.url, self.ssl, self.ca, self.calls = url, ssl, root_certificates, []
        _RecordingClient.opened.append(self)

    async def __aenter__(self) -> _RecordingClient:
        return self

    async def __aexit__(self, *_exc) -> None:
        await self.close()

    async def close(self) -> None:
        pass

    async def is_server_live(self, **_) -> bool:
        self.calls.append("server check")
        return True

    async def is_model_ready(self, model: str, **_) -> bool:
        return True

    async def get_model_metadata(self, model: str, **_) -> dict:
        return {"name": model, "inputs": [{"name": "TEXT"}], "outputs": [{"name": "LABEL"}, {"name": "PROBABILITIES"}]}

    async def get_model_config(self, model: str, **_) -> dict:
        return {"config": {"parameters": {}}}

    async def get_server_metadata(self, **_) -> dict:
        return {"name": "triton", "version": "test"}

    async def get_inference_statistics(self, model: str, **_) -> dict:
        self.calls.append("statistics")
        return {"model_stats": []}

    async def infer(self, model: str, inputs, **_):
        self.calls.append("request")
        raise RuntimeError("no server in a unit test")


def test_every_client_of_a_load_test_opens_with_its_tls_settings(monkeypatch, tmp_path):
    # The server check, the statistics reader and the request function each open their own client: all three must
    # go through the run's one GrpcChannel, or a load test against a TLS server fails (or silently goes plaintext).
    import tritonclient.grpc.aio

    from engineforge.grpc_channel import ClientTls

    ca = tmp_path / "ca.pem"
    ca.write_text("a CA certificate (never read: the client is a stand-in)\n")
    monkeypatch.setattr(tritonclient.grpc.aio, "InferenceServerClient", _RecordingClient)
    monkeypatch.setattr(_RecordingClient, "opened", [])
    config = LoadTestConfig(model="m", url="127.0.0.1:1", tls=ClientTls(ca), concurrency=(1,), duration_s=0.2,
                            warmup_s=0.0, progress_every_s=0, max_consecutive_errors=3)
    result = run_loadtest(config)
    assert result.levels[0].metrics.errors >= 1  # the stand-in's requests fail; only the clients matter here
    opened = _RecordingClient.opened
    assert {call for client in opened for call in client.calls} == {"server check", "statistics", "request"}
    assert all(client.ssl and client.ca == str(ca) and client.url == "127.0.0.1:1" for client in opened), \
        [(client.url, client.ssl, client.ca, client.calls) for client in opened]
