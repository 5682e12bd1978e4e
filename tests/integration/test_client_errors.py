"""What clients are told, against a real tritonserver in explicit model-control mode with a control key: a model
reloading is waited through (EngineforgeClient and the load tester retry it) and named as a reload, and a
restricted call without the key says the key is missing instead of "no server answers"."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import tritonclient.grpc as grpcclient

from engineforge.errors import ModelNotReadyError
from engineforge.grpc_channel import CONTROL_HEADER
from engineforge.grpc_errors import PermissionDeniedError
from engineforge.loadtest.config import LoadTestConfig
from engineforge.loadtest.markdown_report import markdown_report
from engineforge.loadtest.runner import run_loadtest
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.server import TritonServer, find_triton
from tests.helpers.echo_models import write_repo

pytestmark = pytest.mark.triton

KEY = "k3y-for-tests"
MODEL = "slow_init"  # its load takes 1.5 s: an unload + load leaves that long with no version loaded


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    find_triton()
    root = tmp_path_factory.mktemp("client-errors")
    repo = write_repo(root / "repo", ("echo_text", MODEL))
    with TritonServer(repo, model_control_mode="explicit", load_models=("echo_text", MODEL), control_key=KEY,
                      log_file=root / "triton.log", startup_timeout_s=180) as served:
        yield served


class Reload:
    """Unload `MODEL`, wait `gap_s`, load it again (its load takes 1.5 s), in a thread; `unloaded` is set once
    Triton has no version of it."""

    def __init__(self, url: str, gap_s: float = 0.5, after_s: float = 0.0) -> None:
        self.url, self.gap_s, self.after_s = url, gap_s, after_s
        self.unloaded = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        try:
            time.sleep(self.after_s)
            client.unload_model(MODEL, headers={CONTROL_HEADER: KEY})
            while client.is_model_ready(MODEL):
                time.sleep(0.02)
            self.unloaded.set()
            time.sleep(self.gap_s)
            client.load_model(MODEL, headers={CONTROL_HEADER: KEY})
        finally:
            client.close()

    def __enter__(self) -> Reload:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=60)


def test_a_restricted_call_without_the_control_key_says_so_at_once(server: TritonServer):
    with EngineforgeClient(server.grpc_url, timeout_s=20) as client:
        started = time.monotonic()
        with pytest.raises(PermissionDeniedError) as info:
            client.ready_models()
        assert time.monotonic() - started < 3  # not retried as if the server were away
        message = str(info.value)
        assert "control key" in message and "--control-key-file" in message and "no Triton server" not in message
        with pytest.raises(ModelNotReadyError, match=r"listing them needs the control key"):
            client.classify(["hi"], model="no_such_model")
    with EngineforgeClient(server.grpc_url, control_key=KEY) as admin:
        assert {"echo_text", MODEL} <= set(admin.ready_models())


def test_a_client_waits_through_a_reload_and_names_it(server: TritonServer):
    lines: list[str] = []
    with EngineforgeClient(server.grpc_url, timeout_s=30, retry_s=30, log=lines.append) as client, \
            EngineforgeClient(server.grpc_url, retry=False, timeout_s=5) as impatient:
        client.classify(["warm the label cache"], model=MODEL)
        impatient.classify(["warm the label cache"], model=MODEL)
        with Reload(server.grpc_url, gap_s=1.0) as reload:
            assert reload.unloaded.wait(30)
            with pytest.raises(ModelNotReadyError) as info:
                impatient.classify(["where is my parcel?"], model=MODEL)
            assert str(info.value).startswith(f"model '{MODEL}' is reloading on Triton at {server.grpc_url}: no "
                                              "version of it is loaded right now")
            started = time.monotonic()
            assert client.classify(["where is my parcel?"], model=MODEL)[0].label in ("negative", "positive")
            assert time.monotonic() - started > 0.5  # it waited for the reload, it did not fail
    assert len(lines) == 1 and lines[0].startswith(f"model '{MODEL}' is reloading on Triton at {server.grpc_url} (")
    assert "has no available versions); retrying for up to 30s" in lines[0]


def test_the_load_test_waits_through_a_reload_instead_of_counting_failures(server: TritonServer):
    # 20 req/s leaves the model idle between requests, so the unload completes (under a closed loop Triton keeps
    # serving an unloading model until it is idle) and requests meet "has no available versions"
    config = LoadTestConfig(model=MODEL, url=server.grpc_url, rates=(20.0,), duration_s=5.0, warmup_s=0.3,
                            progress_every_s=0, timeout_s=20.0)
    with Reload(server.grpc_url, gap_s=0.5, after_s=1.5):
        result = run_loadtest(config)
    m = result.levels[0].metrics
    assert m.errors == 0, m.error_examples  # before: NOT_FOUND "has no available versions" as server errors
    assert m.reload_retried >= 1 and m.latency_max_ms > 1000  # the reload's wait is in the latency
    assert f"{m.reload_retried} requests met the model reloading and were sent again" in markdown_report(result)
