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
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from engineforge import progress
from engineforge.errors import ServerError
from engineforge.grpc_channel import (
    CONTROL_HEADER,
    CONTROL_KEY_NAME,
    RESTRICTED_PROTOCOLS,
    TlsFiles,
    die_with_parent,
    grpc_client,
)

from . import leftovers
from .gate import KEY_PLACEHOLDER, Gate, prepare_gate
from .server_ready import wait_until_ready
from .triton_env import TritonInstallation, find_triton, free_port, repository_models, server_environment

__all__ = ["TritonServer", "find_triton", "free_port"]

CONTROL_MODES = ("none", "explicit")
EXIT_TIMEOUT_S = 3


class TritonServer:
    """A tritonserver process bound to 127.0.0.1; use as a context manager.

    Ports given as 0 are picked free. `start()` returns once the server and every expected model are
    ready (all repository models in mode "none"; `load_models` in mode "explicit"), else raises
    ServerError with the reason and the tail of the server log.

    The server runs with engineforge's gate preloaded (see gate.py): the control key never appears on its
    command line, `stop()` drains (new requests get UNAVAILABLE, accepted ones finish, up to `drain_timeout_s`),
    and `supervised` servers report readiness as the supervisor decides (Triton's own strict readiness turns
    NOT READY whenever any version loads); unsupervised ones keep Triton's strict readiness.
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
        supervised: bool = False,
        drain_timeout_s: float = 30.0,
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
        self.supervised, self.drain_timeout_s = supervised, drain_timeout_s
        self.gate: Gate | None = None
        self._log_file = Path(log_file).resolve() if log_file else None
        self._log_path: Path | None = self._log_file
        self._runtime_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def serving(cls, repo: str | os.PathLike[str], **options: object) -> TritonServer:
        """A server for what a repository serves: each published model's entry points (which bring the version they
        serve) and any other model; never every old version's models, which Triton's control mode "none" loads."""
        from .version_switch import served_models

        models = served_models(Path(repo))
        return cls(repo, model_control_mode="explicit", load_models=models, **options)  # type: ignore[arg-type]

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
            # The gate's drain already waited for accepted requests (drain_timeout_s): Triton's own wait on exit is
            # only for what a drain that timed out left, so a stop ends near its drain timeout, not 10 s past it.
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
            f"--log-verbose={self.log_verbose}",
            # Supervised: readiness is the supervisor's verdict through the gate, not "no version is loading".
            f"--strict-readiness={'false' if self.supervised else 'true'}",
            # Python-backend shared memory names collide between servers on one host unless prefixed; the owner's
            # pid in the name lets a later start remove what a killed one left.
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if self.control_key:  # the gate puts the key in place of the placeholder before main() reads it
            args += [f"--grpc-restricted-protocol={RESTRICTED_PROTOCOLS}:{CONTROL_KEY_NAME}={KEY_PLACEHOLDER}",
                     f"--http-restricted-api={RESTRICTED_PROTOCOLS}:{CONTROL_KEY_NAME}={KEY_PLACEHOLDER}"]
        if self.tls is not None:
            args += self.tls.server_args()
        return args + [f"--load-model={name}" for name in self.load_models]

    @property
    def shm_prefix(self) -> str:
        return leftovers.shm_prefix(os.getpid(), self.grpc_port)

    def start(self) -> TritonServer:
        if self._process is not None:
            raise ServerError("this TritonServer was already started; create a new one")
        installation = find_triton()
        for what in leftovers.sweep():
            progress.info(f"removed what a killed server left: {what}")
        self._runtime_dir = Path(tempfile.mkdtemp(prefix=leftovers.runtime_dir_prefix()))
        self.gate, gate_env = prepare_gate(self._runtime_dir, self.control_key)
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
                env=server_environment(installation) | gate_env,
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

    def wait_until_ready(self) -> None:
        """Return once the server and every expected model are ready; ServerError with the log's reasons if not."""
        if self._process is None:
            raise ServerError("the server has not been started; call start()")
        wait_until_ready(self, self._process)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the server exits; returns its exit code."""
        if self._process is None:
            raise ServerError("the server has not been started")
        return self._process.wait(timeout=timeout)

    def drain(self, timeout_s: float | None = None) -> bool:
        """Refuse new requests (UNAVAILABLE, readiness NOT READY) and wait for the accepted ones to be answered;
        False if some were still unanswered after `timeout_s` (default `drain_timeout_s`)."""
        if self.gate is None or not self.is_running():
            return True
        self.gate.set_draining(True)
        return self.gate.wait_drained(self.drain_timeout_s if timeout_s is None else timeout_s)

    def stop(self, *, keep_runtime_dir: bool = False, drain: bool = True) -> None:
        """Drain (see `drain`), then SIGTERM (Triton unloads models and ends its stubs), then SIGKILL the group after
        the grace period; a server that already died has its leftover stubs killed and its regions removed."""
        process = self._process
        grace_s = self.stop_grace_s + 5
        if drain and not self.drain():
            progress.info(f"{self.gate.inflight() if self.gate else '?'} request(s) still unanswered after the "
                          f"{self.drain_timeout_s:g}s drain; stopping anyway")
            grace_s = EXIT_TIMEOUT_S + 2  # Triton would wait for the busy stubs; the drain was the grace period
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                progress.info(f"tritonserver (pid {process.pid}) did not stop within {grace_s:g}s of SIGTERM; "
                              "killing it and its stubs")
                # Still unreaped, so the group id is certainly ours: the server and its stubs.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if process is not None:
            # Stubs outlive a server that was killed (Triton 2.51 stubs do not notice their parent's death): end
            # what is left of its process group. The group id is not reused while any member is alive.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            leftovers.wait_group_gone(process.pid)  # their mappings go with them; then their regions can be removed
            leftovers.sweep(self.shm_prefix)
        if self.gate is not None:
            self.gate.close()
            self.gate = None
        if self._runtime_dir is not None and not keep_runtime_dir:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self if self._process is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
