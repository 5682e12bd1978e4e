"""`engineforge serve`'s supervisor: Triton that repairs itself and tells the truth about its health.

Triton 2.51 neither restarts a python-backend stub that died nor stops calling the model READY (every request
then fails with "Stub process ... is not healthy"). The supervisor watches each stub process through a pidfd,
so it learns of a death at once; it unloads that model (readiness turns NOT READY, and so does every ensemble
using it, and the server's own readiness) and loads it again. A tritonserver that exits is started again on
the same ports. New versions published into the repository are loaded as they appear (composing models
first, ensembles last), and Triton retires the old version once the new one is ready, so nothing is dropped.
Everything runs on the main thread: the server is started with PR_SET_PDEATHSIG, tied to the starting thread.
"""

from __future__ import annotations

import os
import re
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engineforge import progress
from engineforge.errors import ServerError

from .grpc_security import CONTROL_HEADER, new_control_key, write_key_file
from .server import TritonServer
from .triton_env import repository_models

STUB_BINARY = "triton_python_backend_stub"
_INSTANCE_SUFFIX = re.compile(r"_\d+_\d+$")  # Triton names stub instances <model>_<group>_<index>
RETIRE_GRACE_S = 0.3


def find_stubs(server_pid: int) -> dict[int, str]:
    """{pid: model name} of the python-backend stubs whose parent is `server_pid`."""
    return {pid: model for pid, (model, _, _) in find_stub_versions(server_pid).items()}


def find_stub_versions(server_pid: int) -> dict[int, tuple[str, str, str]]:
    """{pid: (model name, version, instance name)} of the python-backend stubs whose parent is `server_pid`."""
    stubs = {}
    for entry in _children(server_pid):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                args = handle.read().decode(errors="replace").split("\0")
        except (OSError, ValueError, IndexError):
            continue  # the process went away while we looked
        if args and args[0].endswith(STUB_BINARY) and len(args) > 9:  # args[1]: <repo>/<model>/<version>/model.py
            stubs[int(entry)] = (_INSTANCE_SUFFIX.sub("", args[8]), Path(args[1]).parent.name, args[8])
    return stubs


def _children(pid: int) -> list[str]:
    """Child pids: from /proc/PID/task/*/children where the kernel has it (cheap), else a scan of /proc."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        return [c for t in tasks for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except OSError:
        pass
    children = []
    for entry in (e for e in os.listdir("/proc") if e.isdigit()):
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                if int(handle.read().rsplit(b")", 1)[1].split()[1]) == pid:
                    children.append(entry)
        except (OSError, ValueError, IndexError):
            continue
    return children


@dataclass
class Event:
    at: float
    what: str


@dataclass
class Supervisor:
    """Run `make_server()` and keep it serving until `should_stop()` or a KeyboardInterrupt."""

    make_server: Callable[[], TritonServer]
    poll_s: float = 0.2
    max_restarts: int = 20  # a server that dies this often is broken, not unlucky
    models: tuple[str, ...] | None = None  # the models served; None = every model in the repository
    events: list[Event] = field(default_factory=list)
    server: TritonServer | None = None
    # pidfd -> (pid, (model, version, instance))
    _watched: dict[int, tuple[int, tuple[str, str, str]]] = field(default_factory=dict)
    _repo_state: dict[str, float] = field(default_factory=dict)
    _scanned: float = 0.0

    def log(self, what: str) -> None:
        self.events.append(Event(time.time(), what))
        progress.info(what)

    def start(self) -> TritonServer:
        self.server = self.make_server().start()
        self._repo_state = self._snapshot()
        self._watch_stubs()
        return self.server

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """The supervision loop (main thread)."""
        restarts = 0
        if self.server is None:
            self.start()
        while not should_stop():
            server = self.server
            if server is None:
                raise ServerError("the supervisor has no server; call start()")
            if not server.is_running():
                restarts += 1
                if restarts > self.max_restarts:
                    raise ServerError(f"tritonserver died {restarts} times; giving up (log {server.log_path})")
                self.log(f"tritonserver exited (code {server._process.poll() if server._process else '?'}); "
                         f"restarting it ({restarts}/{self.max_restarts})")
                self._close_watches()
                server.stop()
                self.start()
                self.log("tritonserver restarted and ready")
                continue
            self._repair_dead_stubs(server)
            self._load_new_versions(server)

    def _watch_stubs(self) -> None:
        self._scanned = time.monotonic()
        if self.server is None or self.server.pid is None:
            return
        known = {pid for pid, _ in self._watched.values()}
        for pid, stub in find_stub_versions(self.server.pid).items():
            if pid in known:
                continue
            try:
                self._watched[os.pidfd_open(pid)] = (pid, stub)
            except ProcessLookupError:
                continue

    def _close_watches(self) -> None:
        for fd in self._watched:
            os.close(fd)
        self._watched.clear()

    def _repair_dead_stubs(self, server: TritonServer) -> None:
        ready, _, _ = select.select(list(self._watched), [], [], self.poll_s)
        if not ready:
            if time.monotonic() - self._scanned > 1.0:  # stubs only appear after loads; a scan reads /proc
                self._watch_stubs()
            return
        client = server.client()
        dead = set()
        try:
            suspects = []
            for fd in ready:
                suspects.append(self._watched.pop(fd))
                os.close(fd)
            # Triton ends stubs itself when it retires a version (new version, rollback, unload) or reloads one
            # (new instances with the same names first). A crash: after a short grace no stub has taken the
            # instance's place, and Triton still calls that version READY.
            time.sleep(RETIRE_GRACE_S)
            alive = set(find_stub_versions(server.pid).values()) if server.pid else set()
            for pid, (model, version, instance) in suspects:
                if (model, version, instance) not in alive and self._still_loaded(client, model, version):
                    dead.add(model)
                    self.log(f"stub of model {model!r} version {version} ({instance}, pid {pid}) died")
            for model in sorted(dead):
                started = time.perf_counter()
                # Unload first: readiness turns NOT READY at once, for the model and every ensemble using it.
                client.unload_model(model, headers=server.control_headers)  # type: ignore[attr-defined]
                self.log(f"model {model!r} unloaded (NOT READY); reloading")
                self._load(client, server, model)
                self.log(f"model {model!r} reloaded in {time.perf_counter() - started:.1f}s")
            if dead:
                self._reload_ensembles(client, server)
        finally:
            client.close()  # type: ignore[attr-defined]
        self._watch_stubs()

    @staticmethod
    def _still_loaded(client: object, model: str, version: str) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return bool(client.is_model_ready(model, version))  # type: ignore[attr-defined]
        except InferenceServerException:
            return False

    def _load(self, client: object, server: TritonServer, model: str) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            client.load_model(model, headers=server.control_headers)  # type: ignore[attr-defined]
        except InferenceServerException as exc:
            self.log(f"model {model!r} failed to load: {exc.message()}")

    def _reload_ensembles(self, client: object, server: TritonServer) -> None:
        """Ensembles unloaded along with a member come back once the member is READY again."""
        index = client.get_model_repository_index(headers=server.control_headers)  # type: ignore[attr-defined]
        for model in index.models:
            if model.state != "READY" and self._ensemble_members(server.repo / model.name) is not None:
                self._load(client, server, model.name)

    @staticmethod
    def _ensemble_members(model_dir: Path) -> set[str] | None:
        """The composing models of an ensemble; None for any other model (or no readable config)."""
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        try:
            config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        except (OSError, text_format.ParseError):
            return None
        return {step.model_name for step in config.ensemble_scheduling.step} if config.platform == "ensemble" else None

    def _snapshot(self) -> dict[str, float]:
        """Modification times of each model's config and version manifest: a publish or rollback changes them."""
        state = {}
        repo = self.server.repo if self.server else None
        for model_dir in sorted(p for p in (repo.iterdir() if repo else []) if p.is_dir() and p.name[0] != "."):
            for name in ("config.pbtxt", "versions.json"):
                path = model_dir / name
                if path.is_file():
                    state[f"{model_dir.name}/{name}"] = path.stat().st_mtime
        return state

    def _load_new_versions(self, server: TritonServer) -> None:
        state = self._snapshot()
        changed = sorted({key.split("/")[0] for key in state if state[key] != self._repo_state.get(key)})
        self._repo_state = state
        if self.models is not None:
            changed = [m for m in changed if m in self.models]
        if not changed:
            return
        # Loading an ensemble re-reads it and its members from the repository and reloads whatever changed, in
        # dependency order (a member reloaded alone brings its ensembles back with their old configs, which
        # would undo a rollback): so a changed ensemble is loaded by itself, a changed member only when no
        # changed ensemble covers it.
        ensembles = {m: members for m in changed if (members := self._ensemble_members(server.repo / m)) is not None}
        covered = set().union(*ensembles.values())
        changed = [m for m in changed if m in ensembles or m not in covered]
        client = server.client()
        try:
            for model in sorted(changed, key=lambda m: m in ensembles):
                started = time.perf_counter()
                self._load(client, server, model)
                self.log(f"model {model!r} (re)loaded from the repository in {time.perf_counter() - started:.1f}s")
        finally:
            client.close()  # type: ignore[attr-defined]
        self._watch_stubs()


def serve_forever(repo: str | os.PathLike[str], *, key_file: str | os.PathLike[str] | None = None,
                  **server_options: object) -> int:
    """Run Triton under the supervisor in the foreground until Ctrl-C or SIGTERM; returns 0 after a clean stop.

    Every repository model is loaded with explicit model control, so the supervisor can unload a model whose
    stub died (honest readiness), reload it, and load new versions as they are published. Model control needs
    the control key (written to `key_file`, owner-only). Raises ServerError if the server cannot be started.
    """
    key = server_options.pop("control_key", None) or new_control_key()
    options = dict(server_options, model_control_mode="explicit", control_key=key, die_with_parent=True)
    first = TritonServer(repo, **options)  # type: ignore[arg-type]
    # Fixed ports from here on: a restarted server answers where clients already connect.
    options.update(grpc_port=first.grpc_port, http_port=first.http_port, metrics_port=first.metrics_port)

    only = tuple(options.pop("load_models", ()) or ())  # type: ignore[call-overload]

    def make_server() -> TritonServer:
        models = list(only) or repository_models(Path(repo))
        if not models:
            raise ServerError(f"model repository {repo} holds no models; publish one with build-engine first")
        return TritonServer(repo, **(options | {"load_models": tuple(models)}))  # type: ignore[arg-type]

    supervisor = Supervisor(make_server, models=only or None)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if main_thread:  # SIGTERM (e.g. from a process manager) takes the same clean path as Ctrl-C
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)}
    try:
        server = supervisor.start()
        key_path = write_key_file(Path(key_file) if key_file else server.log_path.parent / "control.key", key)
        progress.info(
            f"Triton serving {server.repo}: gRPC {server.grpc_url}{' (TLS)' if server.tls else ''}, HTTP "
            f"{server.http_url}, metrics {server.metrics_url}; readiness gRPC ServerReady/ModelReady, HTTP "
            f"/v2/health/ready, /v2/models/NAME/ready; liveness /v2/health/live; log {server.log_path}; model "
            f"control needs header {CONTROL_HEADER} (key in {key_path}). Ctrl-C stops it."
        )
        supervisor.run()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        server = supervisor.server
        if server is not None and server.is_running():
            progress.info("stopping Triton ...")
            if main_thread:  # a second Ctrl-C must not abort the shutdown and orphan the server
                previous.setdefault(signal.SIGINT, signal.signal(signal.SIGINT, signal.SIG_IGN))
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            server.stop()
            progress.info("Triton stopped")
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
