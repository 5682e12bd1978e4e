"""`engineforge serve`'s supervisor: Triton that repairs itself, switches versions without mixing them, tells the truth
about its health and stops without dropping accepted requests.

- A python stub that dies (Triton 2.51 neither restarts it nor stops calling the model READY) is seen at once
  through a pidfd: readiness of the model, of the entry points using it and of the server turns NOT READY through
  the gate (gate.py) before anything else happens, then the model is unloaded, reloaded and READY again.
- A tritonserver that exits is started again on the same ports.
- Publishes and rollbacks (configs changed on disk) switch versions as version_switch.py describes, in a worker
  thread, so a stub that dies during a long load is still seen at once; each verdict goes to the repository's
  status file, where the publishing or rolling-back command waits for it (serving_status.py).
- Readiness (gRPC ServerReady, HTTP /v2/health/ready) means "every served model can answer now": it does not
  drop while a new version loads beside the serving one, nor stay down after a refused version.
- SIGTERM drains: NOT READY and UNAVAILABLE for new requests at once, accepted requests answered, then the command
  exits 130, as every interrupted command does.
The server is started with PR_SET_PDEATHSIG, tied to the starting thread: it is started on the main thread.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engineforge import progress
from engineforge.errors import EngineforgeError, ServerError

from . import leftovers
from .published import pinned
from .repository_watch import actions_for, config_mtimes, ensemble_steps
from .server import TritonServer
from .serving_status import write_status
from .stubs import ExpectedExits, StubWatch, children, end_lingering, find_stub_versions
from .version_switch import ModelControl, entry_points_of, must_be_ready, published_models, switch_version


@dataclass
class Event:
    at: float
    what: str


class _TrackedControl(ModelControl):
    """Model control that marks each model it touches, so the exit of that model's old stubs is not taken for a
    crash."""

    def __init__(self, supervisor: Supervisor, server: TritonServer) -> None:
        super().__init__(server.client(), server.control_headers)
        self.supervisor = supervisor

    def load(self, name: str) -> None:
        # Loading an ensemble may reload the models it runs: their old stubs exiting is expected too.
        with self.supervisor.expected.during(name, *self.supervisor.steps_of(name)):
            super().load(name)

    def unload(self, name: str) -> None:
        with self.supervisor.expected.during(name):
            super().unload(name)


@dataclass
class Supervisor:
    """Run `make_server()` and keep it serving until `should_stop()` or a KeyboardInterrupt."""

    make_server: Callable[[], TritonServer]
    poll_s: float = 0.2
    max_restarts: int = 20  # a server that dies this often is broken, not unlucky
    only: tuple[str, ...] = ()  # serve only these models (published names or others); () = all
    drain_s: float = 30.0
    events: list[Event] = field(default_factory=list)
    server: TritonServer | None = None
    _stubs: StubWatch = field(default_factory=StubWatch)
    _repo_state: dict[str, float] = field(default_factory=dict)
    _serving: dict[str, int] = field(default_factory=dict)  # published model -> version it serves
    expected: ExpectedExits = field(default_factory=ExpectedExits)
    _changes: dict[str, dict] = field(default_factory=dict)
    _actions: queue.Queue = field(default_factory=queue.Queue)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _swept: float = 0.0
    _worker: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def log(self, what: str) -> None:
        self.events.append(Event(time.time(), what))
        progress.info(what)

    def steps_of(self, model: str) -> tuple[str, ...]:
        """The models an ensemble's config on disk runs; () for other models."""
        return ensemble_steps(self.server.repo, model) if self.server else ()

    def start(self) -> TritonServer:
        self.server = self.make_server().start()
        repo = self.server.repo
        with self._lock:
            self._repo_state = self._snapshot()
            self._serving = {m: pinned(repo, m)[0] for m in published_models(repo) if not self.only or m in self.only}
        self._update_readiness()
        self._stubs.watch(self.server.pid)
        return self.server

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """The supervision loop (main thread); model control runs in a worker thread."""
        restarts = 0
        if self.server is None:
            self.start()
        self._worker = threading.Thread(target=self._work, name="engineforge-model-control", daemon=True)
        self._worker.start()
        try:
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
                    self._stubs.close()
                    while not self._actions.empty():  # repairs meant for the dead server: the new one starts clean
                        self._actions.get_nowait()
                    server.stop(drain=False)
                    self.start()
                    self.log("tritonserver restarted and ready")
                    continue
                self._detect_dead_stubs(server)
                self._poll_repository()
                self._sweep_regions(server)
        finally:
            self._stopping.set()
            if self._worker is not None:
                self._worker.join(timeout=5)

    # --- stubs: a death outside the supervisor's own loads and unloads is a crash -------------------------------
    def _detect_dead_stubs(self, server: TritonServer) -> None:
        dead = self._stubs.dead(self.poll_s)
        if not dead:
            if time.monotonic() - self._stubs.scanned > 1.0:  # stubs only appear after loads; a scan reads /proc
                self._stubs.watch(server.pid)
            return
        alive = set(find_stub_versions(server.pid).values()) if server.pid else set()
        for pid, (model, version, instance) in dead:
            if self.expected.now(model) or (model, version, instance) in alive:
                self._stubs.region(pid)
                continue  # retired by a load or unload of ours, or replaced by a newer instance
            affected = {model, *entry_points_of(model)}
            gate = server.gate
            if gate is not None:  # honest at once: NOT READY before anything else happens
                gate.set_not_ready(gate.not_ready() | affected)
                gate.set_ready(False)
            self.log(f"stub of model {model!r} version {version} ({instance}, pid {pid}) died; NOT READY: "
                     f"{', '.join(sorted(affected))}")
            self._actions.put(("repair", model, pid))
        self._stubs.watch(server.pid)

    def _sweep_regions(self, server: TritonServer) -> None:
        """Shared memory the python backend leaves behind (stubs that died; instances it unloaded), every 5 s."""
        if time.monotonic() - self._swept < 5.0 or server.pid is None:
            return
        self._swept = time.monotonic()
        stubs = [int(c) for c in children(server.pid)]
        for region in leftovers.sweep_unmapped(server.shm_prefix, server.pid, stubs):
            progress.info(f"removed shared memory nobody maps any more: /dev/shm/{region}")

    # --- repository: publishes, rollbacks, edited configs --------------------------------------------------------
    def _snapshot(self) -> dict[str, float]:
        return config_mtimes(self.server.repo if self.server else None)

    def _poll_repository(self) -> None:
        with self._lock:
            state = self._snapshot()
            changed = sorted(name for name in state if state[name] != self._repo_state.get(name))
            self._repo_state = state
            serving = dict(self._serving)
        published = set(published_models(self.server.repo)) if changed and self.server else set()
        for action in actions_for(changed, published, serving):
            self._actions.put(action)

    # --- the worker: one model-control action at a time ----------------------------------------------------------
    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                action = self._actions.get(timeout=0.2)
            except queue.Empty:
                continue
            server = self.server
            if server is None or not server.is_running():
                continue
            try:
                with _TrackedControl(self, server) as control:
                    getattr(self, f"_{action[0]}")(control, *action[1:])
            except (EngineforgeError, OSError) as exc:
                self.log(f"{action[0]} {action[1]!r} failed: {exc}")
            except Exception as exc:  # the triton client raises its own types; the loop must go on
                self.log(f"{action[0]} {action[1]!r} failed: {type(exc).__name__}: {exc}")
            self._update_readiness()
            self._write_status()

    def _switch(self, control: ModelControl, model: str) -> None:
        server = self.server
        assert server is not None
        target, change_id = pinned(server.repo, model)
        if self.only and model not in self.only:
            self._verdict(change_id, model, True, f"{model!r} is not served by this server (--load-model)", target)
            return
        with self._lock:
            current = self._serving.get(model)
        result = switch_version(control, server.repo, model, current, target, server.gate, self.drain_s, self.log)
        with self._lock:
            if result.serving is not None:
                self._serving[model] = result.serving
            self._repo_state = self._snapshot()  # its own restore of the configs is no new change
        if result.ok:
            self.log(result.message)
        self._verdict(change_id, model, result.ok, result.message, target)

    def _reload(self, control: ModelControl, model: str) -> None:
        control.load(model)
        self.log(f"model {model!r} reloaded from the repository")

    def _repair(self, control: ModelControl, model: str, pid: int) -> None:
        server = self.server
        assert server is not None
        started = time.perf_counter()
        retired = {p for p, (m, _, _) in find_stub_versions(server.pid).items() if m == model} if server.pid else set()
        control.unload(model)
        self._forget_stub(server, pid)  # Triton neither reaps a stub that died nor removes its shared memory
        control.load(model)
        states = control.states()
        for entry in entry_points_of(model):
            if "READY" not in states.get(entry, {}).values():
                control.load(entry)
        if server.gate is not None:
            server.gate.set_not_ready(server.gate.not_ready() - {model, *entry_points_of(model)})
        self.log(f"model {model!r} reloaded in {time.perf_counter() - started:.1f}s")
        # Triton cannot finish unloading a model one of whose stubs died: the old model lingers and keeps its other
        # stubs running for nobody. They are ended here, with their shared memory.
        with self.expected.during(model):
            for stale in end_lingering(retired - {pid}, wait_s=5.0):
                self._forget_stub(server, stale)
                self.log(f"ended stub pid {stale} of the retired {model!r} (Triton left it running)")

    def _forget_stub(self, server: TritonServer, pid: int) -> None:
        if server.gate is not None:
            server.gate.reap(pid)
        with self._lock:
            region = self._stubs.region(pid)
        if region.startswith(server.shm_prefix):  # the server may still map it: only the name can go
            (leftovers.SHM_DIR / region).unlink(missing_ok=True)

    # --- what the outside sees -----------------------------------------------------------------------------------
    def _update_readiness(self) -> None:
        """READY exactly when every served model answers: its entry points and version models READY in Triton and
        none marked dead."""
        server = self.server
        if server is None or server.gate is None or not server.is_running():
            return
        try:
            with ModelControl(server.client(), server.control_headers) as control:
                states = control.states()
        except Exception:
            server.gate.set_ready(False)
            return
        with self._lock:
            serving = dict(self._serving)
        ready = all("READY" in states.get(name, {}).values() for name in must_be_ready(server.repo, self.only, serving))
        server.gate.set_ready(ready and not server.gate.not_ready())

    def _verdict(self, change_id: str, model: str, ok: bool, message: str, version: int) -> None:
        if change_id:
            with self._lock:
                self._changes[change_id] = {"model": model, "version": version, "ok": ok, "message": message,
                                            "at": time.time()}

    def _write_status(self) -> None:
        server = self.server
        if server is None:
            return
        with self._lock:
            status = {"pid": os.getpid(), "url": server.grpc_url, "repo": str(server.repo),
                      "models": {m: {"version": v} for m, v in self._serving.items()}, "changes": dict(self._changes)}
        try:
            write_status(server.repo, status)
        except OSError as exc:
            self.log(f"cannot write the serving status into {server.repo}: {exc}")
