"""What killed servers leave: found by the owner's pid in each name, removed only when the owner is gone (or, for a
live server, when nothing maps a region any more)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engineforge.serve import leftovers


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    shm, tmp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir()
    tmp.mkdir()
    monkeypatch.setattr(leftovers, "SHM_DIR", shm)
    monkeypatch.setattr(leftovers.tempfile, "gettempdir", lambda: str(tmp))
    monkeypatch.setattr(leftovers, "orphan_stubs", dict)  # never touch real processes here
    return shm, tmp


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_what_dead_owners_left_goes_and_what_live_ones_use_stays(places: tuple[Path, Path]) -> None:
    shm, tmp = places
    dead, alive = _dead_pid(), os.getpid()
    gone = [shm / f"{leftovers.shm_prefix(dead, 8001)}a", shm / f"{leftovers.shm_prefix(dead, 8001)}b",
            tmp / f"{leftovers.RUNTIME_PREFIX}{dead}-x1"]
    kept = [shm / f"{leftovers.shm_prefix(alive, 8001)}c", shm / "other_region",
            tmp / f"{leftovers.RUNTIME_PREFIX}{alive}-x2", tmp / f"{leftovers.RUNTIME_PREFIX}nopid"]
    for path in gone + kept:
        path.mkdir() if path.parent == tmp else path.write_bytes(b"x" * 64)
    removed = leftovers.sweep()
    assert not [p for p in gone if p.exists()] and all(p.exists() for p in kept)
    assert len(removed) == 3


def test_a_live_servers_unmapped_regions_go(places: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    shm, _ = places
    prefix = leftovers.shm_prefix(os.getpid(), 8001)
    used, unused = shm / f"{prefix}used", shm / f"{prefix}unused"
    for path in (used, unused):
        path.write_bytes(b"x")
    monkeypatch.setattr(leftovers, "SETTLE_S", 0.0)
    monkeypatch.setattr(leftovers, "mapped_regions", lambda pids=None: {used.name})
    assert leftovers.sweep_unmapped(prefix, os.getpid(), []) == [unused.name]
    assert used.exists() and not unused.exists()


def test_a_region_just_created_is_left_for_its_stub_to_map(places: tuple[Path, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The python backend creates a region, then maps it; a starting stub opens it by name. A sweep that read the
    mappings first and listed the regions after removed a region created in between, and the stub died ("Unable
    to initialize shared memory key"); the supervisor's repair then hung."""
    shm, _ = places
    prefix = leftovers.shm_prefix(os.getpid(), 8001)

    def mappings(pids=None):
        (shm / f"{prefix}starting").write_bytes(b"x")  # created while the mappings are being read
        return set()

    (shm / f"{prefix}left").write_bytes(b"x")
    monkeypatch.setattr(leftovers, "SETTLE_S", 0.0)
    monkeypatch.setattr(leftovers, "mapped_regions", mappings)
    assert leftovers.sweep_unmapped(prefix, os.getpid(), []) == [f"{prefix}left"]
    assert (shm / f"{prefix}starting").exists()


def test_a_region_younger_than_the_settle_time_is_never_swept(places: tuple[Path, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    shm, _ = places
    prefix = leftovers.shm_prefix(os.getpid(), 8001)
    (shm / f"{prefix}fresh").write_bytes(b"x")  # created, not mapped yet
    monkeypatch.setattr(leftovers, "mapped_regions", lambda pids=None: set())
    assert leftovers.sweep_unmapped(prefix, os.getpid(), []) == []
    assert (shm / f"{prefix}fresh").exists()
