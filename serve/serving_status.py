"""What a running `engineforge serve` tells the commands that change its repository: which version of each model
it serves, and how each publish or rollback it was asked for ended.

The supervisor writes `<repo>/.engineforge-serving.json` (Triton ignores files in the repository root); `publish`
and `rollback` write a `change_id` into the entry points' configs and wait here for the verdict on exactly that
change, so a version the server refused (a tampered engine, a model that fails to load) fails the command that
asked for it, with the server's reason, instead of passing while the server quietly keeps the old version.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from engineforge.errors import RepositoryError

STATUS_FILE = ".engineforge-serving.json"
KEPT_CHANGES = 50  # verdicts remembered, newest last


def new_change_id() -> str:
    return uuid.uuid4().hex[:16]


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_status(repo: Path, status: dict[str, Any]) -> None:
    """Atomically (readers never see half a file)."""
    status = dict(status)
    changes = status.get("changes", {})
    status["changes"] = dict(list(changes.items())[-KEPT_CHANGES:])
    partial = repo / f"{STATUS_FILE}.{os.getpid()}.tmp"
    partial.write_text(json.dumps(status, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, repo / STATUS_FILE)


def read_status(repo: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The running supervisor's status for `repo`, or None when no supervisor serves it now."""
    try:
        status = json.loads((Path(repo) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) and _alive(status.get("pid")) else None


def await_change(repo: str | os.PathLike[str], model: str, change_id: str, timeout_s: float = 600.0) -> str | None:
    """Wait for the running server's verdict on one change: its message when the server now serves the change,
    None when no server runs (the change takes effect at the next start); RepositoryError when the server refused
    it (it keeps serving what it served) or gave no verdict in time."""
    deadline = time.monotonic() + timeout_s
    announced = False
    while True:
        status = read_status(repo)
        if status is None:
            return None
        verdict = status.get("changes", {}).get(change_id)
        if verdict is not None:
            if verdict.get("ok"):
                return str(verdict.get("message", ""))
            raise RepositoryError(f"{model}: the server at {status.get('url', '?')} refused the change and keeps "
                                  f"serving version {status.get('models', {}).get(model, {}).get('version', '?')}: "
                                  f"{verdict.get('message', 'no reason given')}")
        if not announced:
            from engineforge import progress

            progress.info(f"waiting for the server at {status.get('url', '?')} (pid {status.get('pid')}) to load "
                          f"{model} ...")
            announced = True
        if time.monotonic() > deadline:
            raise RepositoryError(f"{model}: the server at {status.get('url', '?')} gave no verdict within "
                                  f"{timeout_s:g}s; see its log")
        time.sleep(0.2)
