"""The modes of the files engineforge writes: one rule, applied everywhere.

A file engineforge writes gets the mode `open()` would give it, 0o666 & ~umask (0644 under the usual umask
022), also when it goes through a temporary file (mkstemp creates 0600) or is written by a library that
does so (safetensors' `save_file` behind `save_pretrained`, onnxruntime's calibration cache). What is
published into a Triton model repository is read by tritonserver, which may run as another user (a
container's), so publishing also makes it readable by everyone: files +r, directories +rx, whatever the umask.

The exceptions are deliberate and stay 0600: the control key (engineforge/grpc_channel.py) and the gate's state
file (serve/gate.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_EXECUTABLE = 0o111


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would briefly loosen it for other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def created_mode(*, executable: bool = False, umask: int | None = None) -> int:
    """What open() (or mkdir, for executable=True) creates under the umask."""
    mask = current_umask() if umask is None else umask
    return (0o777 if executable else 0o666) & ~mask


def follow_umask(path: str | os.PathLike[str]) -> Path:
    """Give a file, or every file and directory under a directory, the mode open()/mkdir would have given it.
    Executable files (and directories) keep their execute bits, as far as the umask allows."""
    path = Path(path)
    mask = current_umask()
    for item in (path, *path.rglob("*")) if path.is_dir() else (path,):
        if item.is_symlink():
            continue
        executable = item.is_dir() or bool(item.stat().st_mode & _EXECUTABLE)
        os.chmod(item, created_mode(executable=executable, umask=mask))
    return path


def make_readable(path: str | os.PathLike[str]) -> Path:
    """For what is published to the server: every file readable, every directory listable, by everyone."""
    path = Path(path)
    for item in (path, *path.rglob("*")) if path.is_dir() else (path,):
        if item.is_symlink():
            continue
        mode = item.stat().st_mode & 0o7777
        os.chmod(item, mode | (0o555 if item.is_dir() else 0o444))
    return path


def atomic_write(path: str | os.PathLike[str], data: str | bytes, *, published: bool = False) -> Path:
    """Write `data` to `path` through a temporary file beside it and a rename, so a reader never sees half a
    file; the file gets the rule's mode (readable by everyone when `published` into a model repository)."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), created_mode() | (0o444 if published else 0))
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
