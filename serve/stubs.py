"""The python-backend stub processes of a tritonserver: which exist (from /proc), and a watch that learns of each one's
death at once through a pidfd (no polling delay between a stub dying and readiness turning NOT READY)."""

from __future__ import annotations

import os
import re
import select
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STUB_BINARY = "triton_python_backend_stub"
_INSTANCE_SUFFIX = re.compile(r"_\d+_\d+$")  # Triton names stub instances <model>_<group>_<index>


def find_stubs(server_pid: int) -> dict[int, str]:
    """{pid: model name} of the python-backend stubs whose parent is `server_pid`."""
    return {pid: model for pid, (model, _, _) in find_stub_versions(server_pid).items()}


def find_stub_versions(server_pid: int) -> dict[int, tuple[str, str, str]]:
    """{pid: (model name, version, instance name)} of the python-backend stubs whose parent is `server_pid`."""
    stubs = {}
    for entry in children(server_pid):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                args = handle.read().decode(errors="replace").split("\0")
            with open(f"/proc/{entry}/stat", "rb") as handle:
                if handle.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue  # a dead stub Triton has not reaped
        except (OSError, ValueError, IndexError):
            continue  # the process went away while we looked
        if args and args[0].endswith(STUB_BINARY) and len(args) > 9:  # args[1]: <repo>/<model>/<version>/model.py
            stubs[int(entry)] = (_INSTANCE_SUFFIX.sub("", args[8]), Path(args[1]).parent.name, args[8])
    return stubs


def children(pid: int) -> list[str]:
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



class ExpectedExits:
    """Models whose stubs may exit without it being a crash: while the supervisor loads or unloads them, and for
    `linger_s` after (Triton ends a retired instance's stub a little after the call returns)."""

    def __init__(self, linger_s: float = 5.0) -> None:
        self.linger_s = linger_s
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def during(self, *models: str) -> Iterator[None]:
        with self._lock:
            self._until.update(dict.fromkeys(models, float("inf")))
        try:
            yield
        finally:
            with self._lock:
                self._until.update(dict.fromkeys(models, time.monotonic() + self.linger_s))

    def now(self, model: str) -> bool:
        with self._lock:
            return self._until.get(model, 0.0) > time.monotonic()


class StubWatch:
    """pidfds of a server's stubs, with the shared-memory region each one was given (its third argument)."""

    def __init__(self) -> None:
        self._watched: dict[int, tuple[int, tuple[str, str, str]]] = {}  # pidfd -> (pid, (model, version, instance))
        self._regions: dict[int, str] = {}  # stub pid -> /dev/shm region
        self.scanned = 0.0

    def watch(self, server_pid: int | None) -> None:
        """Start watching the stubs that appeared since the last scan."""
        self.scanned = time.monotonic()
        if server_pid is None:
            return
        known = {pid for pid, _ in self._watched.values()}
        for pid, stub in find_stub_versions(server_pid).items():
            if pid in known:
                continue
            try:
                self._watched[os.pidfd_open(pid)] = (pid, stub)
                self._regions[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[2].decode()
            except (ProcessLookupError, OSError, IndexError):
                continue

    def dead(self, timeout_s: float) -> list[tuple[int, tuple[str, str, str]]]:
        """Wait up to `timeout_s` for watched stubs to exit; the ones that did (no longer watched)."""
        ready, _, _ = select.select(list(self._watched), [], [], timeout_s)
        found = []
        for fd in ready:
            found.append(self._watched.pop(fd))
            os.close(fd)
        return found

    def region(self, pid: int) -> str:
        """The region a stub was given ('' if unknown); forgotten once asked for."""
        return self._regions.pop(pid, "")

    def close(self) -> None:
        for fd in self._watched:
            os.close(fd)
        self._watched.clear()


def end_lingering(pids: set[int], wait_s: float) -> list[int]:
    """Give stubs `wait_s` to exit, then SIGKILL those still running; returns the ones killed."""
    deadline = time.monotonic() + wait_s
    while (left := {p for p in pids if Path(f"/proc/{p}").exists()}) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed = []
    for pid in sorted(left):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            continue
    return killed
