"""Run the real `tritonserver` from the nvidia-pytriton wheel on a model repository.

The wheel ships the server, the python backend and one stub per Python version; we assemble a
backend directory in a temp dir (site-packages is never modified) and start the server with an
environment that makes the stub load this virtualenv's libpython and packages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from engineforge import progress
from engineforge.errors import ServerError

from .grpc_security import (
    CONTROL_HEADER,
    CONTROL_KEY_NAME,
    RESTRICTED_PROTOCOLS,
    TlsFiles,
    die_with_parent,
    grpc_client,
)
from .triton_env import (
    TritonInstallation,
    find_triton,
    free_port,
    log_problems,
    log_tail,
    repository_models,
    server_environment,
)

__all__ = ["TritonServer", "find_triton", "free_port"]

CONTROL_MODES = ("none", "explicit")


class TritonServer:
    """A tritonserver process bound to 127.0.0.1; use as a context manager.

    Ports given as 0 are picked free. `start()` returns once the server and every expected model are
    ready (all repository models in mode "none"; `load_models` in mode "explicit"), else raises
    ServerError with the reason and the tail of the server log.
    """

    def __init__(
        self,
        repo: str | os.PathLike[str],
        *,
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        model_control_mode: str = "none",
        load_models: Sequence[str] = (),
        log_file: str | os.PathLike[str] | None = None,
        log_verbose: int = 0,
        bind: str = "127.0.0.1",
        control_key: str | None = None,
        tls: TlsFiles | None = None,
        die_with_parent: bool = False,
        startup_timeout_s: float = 120.0,
        stop_grace_s: float = 10.0,
    ) -> None:
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise ServerError(f"model repository {self.repo} does not exist; publish an engine into it first")
        if model_control_mode not in CONTROL_MODES:
            raise ServerError(f"model control mode {model_control_mode!r} unsupported; use one of {CONTROL_MODES}")
        if model_control_mode == "none" and load_models:
            raise ServerError("load_models needs model_control_mode='explicit'")
        ports = [p or free_port() for p in (grpc_port, http_port, metrics_port)]
        if len(set(ports)) != 3:
            raise ServerError(f"gRPC, HTTP and metrics ports must differ, got {ports}")
        self.grpc_port, self.http_port, self.metrics_port = ports
        self.model_control_mode = model_control_mode
        # Other interfaces only by explicit choice; administrative gRPC/HTTP APIs need the control key header.
        self.bind, self.control_key, self.tls, self.die_with_parent = bind, control_key, tls, die_with_parent
        self.load_models = tuple(load_models)
        self.log_verbose = log_verbose
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self._log_file = Path(log_file).resolve() if log_file else None
        self._log_path: Path | None = self._log_file
        self._runtime_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1" if self.bind in ("0.0.0.0", "127.0.0.1") else self.bind

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def control_headers(self) -> dict[str, str]:
        """Headers for model control and the other restricted APIs (empty when they are not restricted)."""
        return {CONTROL_HEADER: self.control_key} if self.control_key else {}

    def client(self) -> object:
        """A tritonclient gRPC client for this server (TLS when the server uses it, trusting its own certificate)."""
        if self.tls is not None and self.tls.root_cert is None:
            return grpc_client(self.grpc_url, TlsFiles(root_cert=self.tls.server_cert))
        return grpc_client(self.grpc_url, self.tls)

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            raise ServerError("the server has not been started, so it has no log yet")
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def expected_models(self) -> list[str]:
        return list(self.load_models) if self.model_control_mode == "explicit" else repository_models(self.repo)

    def command(self, installation: TritonInstallation, backend_dir: Path) -> list[str]:
        args = [
            str(installation.binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={backend_dir}",
            f"--model-control-mode={self.model_control_mode}",
            f"--http-address={self.bind}",
            f"--grpc-address={self.bind}",
            f"--metrics-address={self.bind}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={max(1, int(self.stop_grace_s))}",
            f"--log-verbose={self.log_verbose}",
            # Python-backend shared memory names collide between servers on one host unless prefixed.
            f"--backend-config=python,shm-region-prefix-name=engineforge_{os.getpid()}_{self.grpc_port}_",
        ]
        if self.control_key:
            args += [f"--grpc-restricted-protocol={RESTRICTED_PROTOCOLS}:{CONTROL_KEY_NAME}={self.control_key}",
                     f"--http-restricted-api={RESTRICTED_PROTOCOLS}:{CONTROL_KEY_NAME}={self.control_key}"]
        if self.tls is not None:
            args += self.tls.server_args()
        return args + [f"--load-model={name}" for name in self.load_models]

    def start(self) -> TritonServer:
        if self._process is not None:
            raise ServerError("this TritonServer was already started; create a new one")
        installation = find_triton()
        self._runtime_dir = Path(tempfile.mkdtemp(prefix="engineforge-triton-"))
        if self._log_path is None:
            self._log_path = self._runtime_dir / "tritonserver.log"
        backend_dir = self._runtime_dir / "backends"
        (backend_dir / "python").mkdir(parents=True)
        for source in (
            installation.python_backend / "libtriton_python.so",
            installation.python_backend / "triton_python_backend_utils.py",
            installation.stub,
        ):
            (backend_dir / "python" / source.name).symlink_to(source)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            # New session: Ctrl-C in a terminal reaches us, not the server, so we stop it in order.
            self._process = subprocess.Popen(
                self.command(installation, backend_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_environment(installation),
                start_new_session=True,
                # A supervisor killed with SIGKILL must not leave an orphan server behind.
                preexec_fn=die_with_parent if self.die_with_parent else None,
            )
        try:
            self.wait_until_ready()
        except Exception:
            self.stop(keep_runtime_dir=self._log_file is None)  # keep the log the error points to
            raise
        except BaseException:
            self.stop()
            raise
        return self

    def _fail(self, reason: str) -> ServerError:
        failures, errors = log_problems(self.log_path)
        detail = "".join(f"\n  model {model} failed to load: {why}" for model, why in failures.items())
        if errors:
            detail += "\nserver errors:\n" + "\n".join(errors)
        return ServerError(
            f"Triton server on {self.repo} did not become ready: {reason}{detail}\n"
            f"--- last lines of {self.log_path} ---\n{log_tail(self.log_path)}"
        )

    def wait_until_ready(self) -> None:
        from tritonclient.utils import InferenceServerException

        process = self._process
        if process is None:
            raise ServerError("the server has not been started; call start()")
        expected = self.expected_models()
        deadline = time.monotonic() + self.startup_timeout_s
        client = self.client()
        try:
            while True:
                code = process.poll()
                if code is not None:
                    raise self._fail(f"tritonserver exited with code {code}")
                with contextlib.suppress(InferenceServerException):
                    if client.is_server_live(client_timeout=2):
                        states = {
                            m.name: (m.state, m.reason)
                            for m in client.get_model_repository_index(
                                headers=self.control_headers, client_timeout=2).models
                        }
                        failed = {n: s[1] for n, s in states.items() if n in expected and s[0] == "UNAVAILABLE"}
                        if failed:
                            raise self._fail(f"models failed to load: {failed}")
                        if all(states.get(n, ("",))[0] == "READY" for n in expected):
                            if client.is_server_ready(client_timeout=2):
                                return
                if time.monotonic() > deadline:
                    raise self._fail(f"not ready after {self.startup_timeout_s:.0f}s (waiting for {expected})")
                time.sleep(0.2)
        finally:
            client.close()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the server exits; returns its exit code."""
        if self._process is None:
            raise ServerError("the server has not been started")
        return self._process.wait(timeout=timeout)

    def stop(self, *, keep_runtime_dir: bool = False) -> None:
        """SIGTERM (Triton unloads models and ends its stubs), then SIGKILL the group after the grace period; a
        server that already died has its leftover stubs killed."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_grace_s + 5)
            except subprocess.TimeoutExpired:
                progress.info(f"tritonserver (pid {process.pid}) ignored SIGTERM; killing it and its stubs")
                # Still unreaped, so the group id is certainly ours: the server and its stubs.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if process is not None:
            # Stubs outlive a server that was killed (Triton 2.51 stubs do not notice their parent's death): end
            # what is left of its process group. The group id is not reused while any member is alive.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._runtime_dir is not None and not keep_runtime_dir:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self if self._process is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
