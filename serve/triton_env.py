"""Where the nvidia-pytriton wheel keeps tritonserver, the environment it needs, and reading its log.

Measured facts this encodes: the python backend stub finds python through PATH and libpython through
LD_LIBRARY_PATH, so both must point at this virtualenv's interpreter; the wheel's shared libraries
live in `nvidia_pytriton.libs` next to the `pytriton` package.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from engineforge.errors import ServerError

_ERROR_LINE = re.compile(r"^(E\d{4} |error: )")
_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version (\d+): (.*)")
_HARMLESS = re.compile(r"cuda|nvml|dcgm", re.IGNORECASE)  # expected on hosts without a GPU


@dataclass(frozen=True)
class TritonInstallation:
    binary: Path
    python_backend: Path  # holds libtriton_python.so and triton_python_backend_utils.py
    stub: Path
    libs: Path  # nvidia_pytriton.libs: shared libraries the binary was built against


def find_triton() -> TritonInstallation:
    """Locate tritonserver, the python backend and the stub matching this interpreter."""
    try:
        import pytriton
    except ImportError as exc:
        raise ServerError("nvidia-pytriton is not installed; `pip install nvidia-pytriton==0.7.0`") from exc
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = TritonInstallation(
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=root.parent.parent / "nvidia_pytriton.libs",
    )
    for path in (found.binary, found.python_backend / "libtriton_python.so", found.stub):
        if not path.exists():
            raise ServerError(f"{path} not found; reinstall nvidia-pytriton (no stub for Python {version}?)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_environment(installation: TritonInstallation) -> dict[str, str]:
    """The stub finds python via PATH and libpython via LD_LIBRARY_PATH; both must be this venv's."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Without LIBDIR first the stub loads the system libpython and crashes importing ssl.
    lib_dirs = [sysconfig.get_config_var("LIBDIR") or "", str(installation.libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in lib_dirs if d)
    return env


def repository_models(repo: Path) -> list[str]:
    """Models Triton loads from `repo` in control mode none: directories holding a config.pbtxt."""
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and (p / "config.pbtxt").is_file())


def log_tail(path: Path, lines: int = 25) -> str:
    """Last lines of the server log, without the wide status tables Triton prints at startup."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    kept = [line for line in text.splitlines() if line.strip() and not line.startswith(("+", "|"))]
    return "\n".join(kept[-lines:])


def log_problems(path: Path, limit: int = 6) -> tuple[dict[str, str], list[str]]:
    """(model -> first line of its load error, other error lines), ignoring GPU-less-host noise."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}, []
    failures: dict[str, str] = {}
    errors = []
    for line in text.splitlines():
        if not _ERROR_LINE.match(line) or _HARMLESS.search(line):
            continue
        match = _LOAD_FAILURE.search(line)
        if match:
            failures[f"{match[1]} version {match[2]}"] = match[3].split("\\n")[0].strip()
        else:
            errors.append(line)
    return failures, errors[-limit:]
