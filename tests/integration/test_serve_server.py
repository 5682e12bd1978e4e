"""TritonServer lifecycle: load failures are reported with the reason, `engineforge serve` stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engineforge.errors import ServerError
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import TritonServer, find_triton, free_port
from tests.helpers.tiny_engine import TINY_LABELS, tiny_bundle  # noqa: F401

pytestmark = pytest.mark.triton


@pytest.fixture(autouse=True)
def _needs_triton() -> None:
    try:
        find_triton()
    except ServerError as exc:
        pytest.skip(str(exc))


def test_model_that_fails_to_load_raises_server_error_with_reason(tmp_path: Path) -> None:
    model = tmp_path / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        textwrap.dedent("""
        name: "broken"
        backend: "python"
        max_batch_size: 4
        input { name: "X" data_type: TYPE_FP32 dims: [-1] }
        output { name: "Y" data_type: TYPE_FP32 dims: [-1] }
        """)
    )
    (model / "1" / "model.py").write_text(
        textwrap.dedent("""
        class TritonPythonModel:
            def initialize(self, args):
                raise RuntimeError("boom on purpose")
        """)
    )
    server = TritonServer(tmp_path / "repo", log_file=tmp_path / "triton.log", startup_timeout_s=60)
    start = time.monotonic()
    with pytest.raises(ServerError) as info:
        server.start()
    message = str(info.value)
    assert "did not become ready" in message and "boom on purpose" in message and "broken" in message
    assert time.monotonic() - start < 50, "a load failure must be reported promptly, not at the timeout"
    assert not server.is_running()


def test_missing_repository_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="does not exist"):
        TritonServer(tmp_path / "nope")
    with pytest.raises(ServerError, match="explicit"):
        TritonServer(tmp_path, load_models=("m",))
    with pytest.raises(ServerError, match="control mode"):
        TritonServer(tmp_path, model_control_mode="poll")


def test_engineforge_serve_selected_models_stops_cleanly_on_sigterm(tiny_bundle, tmp_path: Path) -> None:  # noqa: F811
    repo = tmp_path / "repo"
    publish_engine(tiny_bundle, repo, "clf", max_batch_size=4)
    publish_engine(tiny_bundle, repo, "other", max_batch_size=4)  # must stay unloaded in explicit mode
    grpc_port = free_port()
    command = [
        sys.executable, "-c", "import sys; from engineforge.cli import main; sys.exit(main())",
        "serve", "--repo", str(repo), "--grpc-port", str(grpc_port), "--http-port", "0", "--metrics-port", "0",
        "--load-model", "clf", "--log-file", str(tmp_path / "triton.log"),
        "--control-key-file", str(tmp_path / "control.key"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stderr:  # blocks until the server is ready (or the command fails)
            lines.append(line)
            if "Triton serving" in line or process.poll() is not None:
                break
        assert any("Triton serving" in line for line in lines), "".join(lines)
        key = (tmp_path / "control.key").read_text().strip()
        assert (tmp_path / "control.key").stat().st_mode & 0o077 == 0  # owner-only
        with EngineforgeClient(f"127.0.0.1:{grpc_port}", control_key=key) as client:
            assert client.ready_models() == ["clf", "clf.v1.engine", "clf_engine"]  # one-hop: one model per version
            assert client.classify(["hello"], model="clf")[0].label in TINY_LABELS
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 130  # interrupted, like every command; after a clean stop
        assert "Triton stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
