"""`engineforge serve` as a real subprocess, a bounded load against it, and a readiness sampler: what the fault,
swap and rollback tests watch. Everything talks to 127.0.0.1 and stops by itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class ServeProcess:
    repo: Path
    workdir: Path
    grpc_port: int
    http_port: int
    process: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def key(self) -> str:
        return (self.workdir / "control.key").read_text().strip()

    def start(self, timeout_s: float = 120) -> ServeProcess:
        command = [sys.executable, "-c", "import sys; from engineforge.cli import main; sys.exit(main())", "serve",
                   "--repo", str(self.repo), "--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port),
                   "--metrics-port", "0", "--log-file", str(self.workdir / "triton.log"),
                   "--control-key-file", str(self.workdir / "control.key"), *self.extra_args]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout_s
        for line in self.process.stderr:  # type: ignore[union-attr]
            self.lines.append(line)
            if "Triton serving" in line or time.monotonic() > deadline:
                break
        if not any("Triton serving" in line for line in self.lines):
            self.stop()
            raise RuntimeError("engineforge serve did not start:\n" + "".join(self.lines))
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        for line in self.process.stderr:  # type: ignore[union-attr]
            self.lines.append(line)

    def triton_pid(self) -> int:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_bytes()
                    cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if int(stat.rsplit(b")", 1)[1].split()[1]) == self.process.pid and b"tritonserver" in cmd:
                    return int(entry)
        raise RuntimeError("no tritonserver child found")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Outcome:
    start: float
    end: float
    ok: bool
    error: str = ""
    text: str = ""
    answer: dict[str, np.ndarray] | None = None  # the outputs asked for, when it succeeded


class TextLoad:
    """`threads` loops of one-text requests to `model` until stopped; every request has a deadline. Closed loops,
    or paced to `rate` requests/s over all threads; `texts` are sent in turn and each answer is kept."""

    def __init__(self, url: str, model: str, *, threads: int = 2, timeout_s: float = 10.0, retry: bool = False,
                 rate: float | None = None, texts: tuple[str, ...] = ("where is my parcel?",),
                 outputs: tuple[str, ...] = ("LABEL",)):
        self.url, self.model, self.timeout_s, self.retry = url, model, timeout_s, retry
        self.rate, self.texts, self.outputs = rate, texts, outputs
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def __enter__(self) -> TextLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 35)

    def _loop(self) -> None:
        from engineforge.serve.client import EngineforgeClient

        # Retry for the whole deadline: a restart on a loaded 2-core machine can outlast the default 10 s.
        client = EngineforgeClient(self.url, timeout_s=self.timeout_s, retry=self.retry,
                                   retry_s=self.timeout_s if self.retry else 10.0)
        gap = len(self._threads) / self.rate if self.rate else 0.0
        sent = 0
        next_send = time.monotonic()
        while not self._stop.is_set():
            text = self.texts[sent % len(self.texts)]
            sent += 1
            start = time.monotonic()
            try:
                answer = client.infer(self.model, {"TEXT": np.array([[text.encode()]], dtype=object)}, self.outputs)
                self.outcomes.append(Outcome(start, time.monotonic(), True, text=text, answer=answer))
            except Exception as exc:  # recorded, never raised: the test judges the records
                self.outcomes.append(Outcome(start, time.monotonic(), False, f"{type(exc).__name__}: {exc}", text))
                time.sleep(0.01)
            if gap:
                next_send += gap
                time.sleep(max(0.0, next_send - time.monotonic()))
        client.close()

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


class ReadinessSampler:
    """Samples gRPC readiness every `every_s`: (time, True/False), True only when both the model and the server
    (ServerReady, what a load balancer asks) say READY; no answer counts as not ready. `server_samples` keeps
    ServerReady alone, ANDed with HTTP /v2/health/ready when `http_url` is given."""

    def __init__(self, url: str, model: str, every_s: float = 0.02, http_url: str | None = None):
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.model, self.every_s, self.http_url = model, every_s, http_url
        self.samples: list[tuple[float, bool]] = []
        self.server_samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ReadinessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.client.close()

    def _http_ready(self) -> bool:
        if self.http_url is None:
            return True
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                server = bool(self.client.is_server_ready(client_timeout=1)) and self._http_ready()
                ready = server and bool(self.client.is_model_ready(self.model, client_timeout=1))
            except Exception:
                server = ready = False
            self.samples.append((at, ready))
            self.server_samples.append((at, server))
            time.sleep(self.every_s)
