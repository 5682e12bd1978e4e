"""What a killed tritonserver, stub or supervisor leaves behind, found and removed: shared-memory regions in
/dev/shm (containers often have only 64 MB there), python stubs that outlived their server, and the temporary
backend directories of supervisors that died.

Every name carries the pid of the process that owns it (`engineforge_<pid>_<port>_...` regions,
`engineforge-triton-<pid>-...` directories), so what belongs to a dead owner is known without guessing; a region
whose owner is alive is removed only when no process maps it any more (a stub that died left it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "engineforge_"
RUNTIME_PREFIX = "engineforge-triton-"
STUB_BINARY = "triton_python_backend_stub"


def shm_prefix(owner_pid: int, port: int) -> str:
    """The python backend's region prefix for one server (its owner's pid and gRPC port keep servers apart)."""
    return f"{SHM_PREFIX}{owner_pid}_{port}_"


def runtime_dir_prefix() -> str:
    return f"{RUNTIME_PREFIX}{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _owner(name: str, prefix: str, separator: str) -> int | None:
    head = name[len(prefix):].split(separator, 1)[0]
    return int(head) if name.startswith(prefix) and head.isdigit() else None


def mapped_regions(pids: list[int] | None = None) -> set[str]:
    """Names of the /dev/shm files some readable process (or one of `pids`) maps now."""
    names = set()
    for entry in pids if pids is not None else (e for e in os.listdir("/proc") if e.isdigit()):
        try:
            with open(f"/proc/{entry}/maps", encoding="utf-8", errors="replace") as handle:
                names.update(line.rsplit("/dev/shm/", 1)[1].strip() for line in handle if "/dev/shm/" in line)
        except OSError:
            continue  # gone, or not ours to read
    return {name.removesuffix(" (deleted)") for name in names}


def orphan_stubs() -> dict[int, int]:
    """{stub pid: dead owner pid} for python stubs whose server's owner is gone (their region names say whose)."""
    found = {}
    for entry in (e for e in os.listdir("/proc") if e.isdigit()):
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if len(args) > 2 and args[0].endswith(STUB_BINARY):
            owner = _owner(args[2], SHM_PREFIX, "_")
            if owner is not None and not _alive(owner):
                found[int(entry)] = owner
    return found


SETTLE_S = 10.0  # a region younger than this may still be on its way to being mapped


def _changed_before(path: Path, moment: float) -> bool:
    try:
        return path.stat().st_ctime < moment
    except OSError:
        return False


def sweep_unmapped(prefix: str, server_pid: int, children: list[int]) -> list[str]:
    """A live server's regions that neither it nor any of its stubs maps any more (left by a stub that died, or
    by the python backend on unload): cheap enough to run every few seconds."""
    # The python backend creates a region and maps it a moment later, and a stub being started opens it by name:
    # only regions older than that window are candidates, listed before the mappings are read (a region created
    # after the mappings were read would otherwise look unmapped, and the starting stub would die on it).
    settled = time.time() - SETTLE_S
    candidates = [r for r in (SHM_DIR.glob(f"{prefix}*") if SHM_DIR.is_dir() else []) if _changed_before(r, settled)]
    mapped = mapped_regions([server_pid, *children]) if candidates else set()
    removed = []
    for region in candidates:
        if region.name not in mapped:
            with contextlib.suppress(OSError):
                region.unlink()
                removed.append(region.name)
    return removed


def sweep(owned_prefix: str | None = None) -> list[str]:
    """Remove what dead owners left (stubs, regions, runtime directories) and, for `owned_prefix` (a live server's
    regions), the regions nobody maps any more. Returns what was removed, for the log."""
    removed = []
    killed = list(orphan_stubs())
    for pid in killed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            removed.append(f"orphan stub pid {pid}")
    deadline = time.monotonic() + 2.0  # their mappings go when they are gone
    while any(Path(f"/proc/{pid}").exists() for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.02)
    mapped = mapped_regions() if SHM_DIR.is_dir() else set()
    for region in sorted(SHM_DIR.glob(f"{SHM_PREFIX}*")) if SHM_DIR.is_dir() else []:
        owner = _owner(region.name, SHM_PREFIX, "_")
        dead_owner = owner is not None and not _alive(owner)
        unused = owned_prefix is not None and region.name.startswith(owned_prefix) and region.name not in mapped
        if (dead_owner and region.name not in mapped) or unused:
            with contextlib.suppress(OSError):
                size = region.stat().st_size
                region.unlink()
                removed.append(f"{region} ({size} bytes)")
    for directory in Path(tempfile.gettempdir()).glob(f"{RUNTIME_PREFIX}*"):
        owner = _owner(directory.name, RUNTIME_PREFIX, "-")
        if owner is not None and owner != os.getpid() and not _alive(owner) and directory.is_dir():
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(str(directory))
    return removed


def wait_group_gone(pgid: int, timeout_s: float = 3.0) -> None:
    """Until no process of the group is left (their mappings, and so their regions, go with them)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.02)
