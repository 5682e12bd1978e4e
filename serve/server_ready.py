"""Waiting for a started tritonserver to be ready, and the error that says why it is not: the load failures and
server errors from its log, then the log's last lines."""

from __future__ import annotations

import contextlib
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from engineforge.errors import ServerError

from .gate import Gate
from .triton_env import log_problems, log_tail


class StartingServer(Protocol):
    """What readiness needs of a TritonServer."""

    repo: Path
    startup_timeout_s: float
    gate: Gate | None

    @property
    def log_path(self) -> Path: ...

    @property
    def control_headers(self) -> dict[str, str]: ...

    def expected_models(self) -> list[str]: ...

    def client(self) -> Any: ...


def startup_failure(repo: Path, log_path: Path, reason: str) -> ServerError:
    failures, errors = log_problems(log_path)
    detail = "".join(f"\n  model {model} failed to load: {why}" for model, why in failures.items())
    if errors:
        detail += "\nserver errors:\n" + "\n".join(errors)
    return ServerError(
        f"Triton server on {repo} did not become ready: {reason}{detail}\n"
        f"--- last lines of {log_path} ---\n{log_tail(log_path)}"
    )


def wait_until_ready(server: StartingServer, process: subprocess.Popen[bytes]) -> None:
    """Poll until `server` is live, every expected model READY and the server ready; ServerError when the process
    exits, an expected model fails to load, or `startup_timeout_s` passes."""
    from tritonclient.utils import InferenceServerException

    def fail(reason: str) -> ServerError:
        return startup_failure(server.repo, server.log_path, reason)

    expected = server.expected_models()
    deadline = time.monotonic() + server.startup_timeout_s
    client = server.client()
    try:
        while True:
            code = process.poll()
            if code is not None:
                raise fail(f"tritonserver exited with code {code}")
            with contextlib.suppress(InferenceServerException):
                if client.is_server_live(client_timeout=2):
                    states = {
                        m.name: (m.state, m.reason)
                        for m in client.get_model_repository_index(
                            headers=server.control_headers, client_timeout=2).models
                    }
                    failed = {n: s[1] for n, s in states.items() if n in expected and s[0] == "UNAVAILABLE"}
                    if failed:
                        raise fail(f"models failed to load: {failed}")
                    if all(states.get(n, ("",))[0] == "READY" for n in expected):
                        if server.gate is not None:
                            server.gate.set_ready(True)  # a supervisor refines it from here on
                        if client.is_server_ready(client_timeout=2):
                            return
            if time.monotonic() > deadline:
                raise fail(f"not ready after {server.startup_timeout_s:.0f}s (waiting for {expected})")
            time.sleep(0.2)
    finally:
        client.close()
