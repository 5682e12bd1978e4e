"""The supervisor's side of `triton_gate.c`, the small library preloaded into tritonserver: build it, and read and
write the state it shares with it (a file both map).

Why a preloaded library: Triton 2.51's own readiness turns NOT READY whenever any version loads (so every
publish looks like an outage to a load balancer) yet stays READY after a python stub died; on SIGTERM it fails
the requests in flight; and it takes the control key only on its command line, readable by every local user. The
gate makes readiness the supervisor's verdict, refuses new work with UNAVAILABLE while accepted work drains,
counts accepted requests by epoch, and swaps the key in before main() from an owner-only file.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import shutil
import subprocess
import time
from pathlib import Path

from engineforge.errors import ServerError

SOURCE = Path(__file__).resolve().parent / "triton_gate.c"
KEY_PLACEHOLDER = "@ENGINEFORGE_CONTROL_KEY@"
STATE_ENV, KEY_FILE_ENV = "ENGINEFORGE_GATE_STATE", "ENGINEFORGE_GATE_KEY_FILE"
MAGIC, LAYOUT = 0x45464754, 1
MAX_MODELS, NAME_BYTES, MAX_REAP = 64, 192, 32


class GateState(ctypes.Structure):
    """Mirror of `gate_state` in triton_gate.c (same order, same sizes)."""

    _fields_ = [
        ("magic", ctypes.c_uint32), ("layout", ctypes.c_uint32),
        ("server_ready", ctypes.c_int32), ("draining", ctypes.c_int32),
        ("epoch", ctypes.c_int64), ("inflight", ctypes.c_int64 * 2),
        ("accepted", ctypes.c_int64), ("refused", ctypes.c_int64),
        ("reap", ctypes.c_int32 * MAX_REAP),
        ("not_ready", (ctypes.c_char * NAME_BYTES) * MAX_MODELS),
    ]


def build_gate(cache_dir: Path) -> Path:
    """Compile the gate (once per source version) with the system C compiler; returns the shared library."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    library = cache_dir / f"engineforge-gate-{digest}.so"
    if library.is_file():
        return library
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ServerError("engineforge serve needs a C compiler to build its Triton gate (honest health, draining "
                          "stops, a hidden control key); install one (`apt-get install gcc`) or set CC")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = library.with_suffix(f".{os.getpid()}.tmp")
    result = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(partial), str(SOURCE), "-ldl",
                             "-lpthread"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServerError(f"building the Triton gate with {compiler} failed:\n{result.stderr.strip()[-2000:]}")
    os.replace(partial, library)  # atomic: a concurrent server never loads half a library
    return library


class Gate:
    """The shared state file, mapped: flags the supervisor sets and counters the gate keeps."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = ctypes.sizeof(GateState)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.state = GateState.from_buffer(self._map)
        self.state.magic, self.state.layout = MAGIC, LAYOUT
        self.state.server_ready = 0  # nothing is served until the supervisor says so

    def environment(self, library: Path, key_file: Path | None) -> dict[str, str]:
        env = {"LD_PRELOAD": str(library), STATE_ENV: str(self.path)}
        return env | ({KEY_FILE_ENV: str(key_file)} if key_file is not None else {})

    def set_ready(self, ready: bool) -> None:
        self.state.server_ready = int(ready)

    @property
    def ready(self) -> bool:
        return bool(self.state.server_ready)

    def set_draining(self, draining: bool = True) -> None:
        self.state.draining = int(draining)

    def set_not_ready(self, models: set[str]) -> None:
        """Models readiness must report NOT READY whatever Triton says (their stub died)."""
        names = sorted(models)[:MAX_MODELS]
        for slot in range(MAX_MODELS):
            self.state.not_ready[slot].value = names[slot].encode()[: NAME_BYTES - 1] if slot < len(names) else b""

    def not_ready(self) -> set[str]:
        return {slot.value.decode() for slot in self.state.not_ready if slot.value}

    def inflight(self) -> int:
        return int(self.state.inflight[0] + self.state.inflight[1])

    def new_epoch(self) -> int:
        """Start a new epoch; returns the previous one, whose requests `wait_epoch_drained` waits for."""
        previous = int(self.state.epoch)
        self.state.epoch = previous + 1
        return previous

    def wait_drained(self, timeout_s: float, epoch: int | None = None) -> bool:
        """Until no accepted request (of `epoch`, or of any) is unanswered; False if the timeout came first."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.state.inflight[epoch & 1] if epoch is not None else self.inflight()
            if left <= 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def reap(self, pid: int) -> None:
        """Ask the gate to reap a python stub that died (Triton never does)."""
        for slot in range(MAX_REAP):
            if self.state.reap[slot] in (0, pid):
                self.state.reap[slot] = pid
                return

    @property
    def counts(self) -> dict[str, int]:
        return {"accepted": int(self.state.accepted), "refused": int(self.state.refused), "inflight": self.inflight()}

    def close(self) -> None:
        del self.state
        self._map.close()


def prepare_gate(runtime_dir: Path, control_key: str | None) -> tuple[Gate, dict[str, str]]:
    """Build the gate, map its state and write the key where only the gate reads it (an owner-only file in the
    server's private runtime directory); returns the gate and the environment that loads it into tritonserver."""
    library = build_gate(_cache_dir(runtime_dir))
    gate = Gate(runtime_dir / "gate.state")
    key_file = None
    if control_key:
        key_file = runtime_dir / "control.key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(control_key)
    return gate, gate.environment(library, key_file)


def _cache_dir(fallback: Path) -> Path:
    """Where the compiled gate is kept between runs: the user's own cache (never a shared /tmp path another user
    could plant a library in), else this server's private runtime directory."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "engineforge"
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        if base.stat().st_uid == os.getuid() and os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    return fallback


