"""Which published version serves: roll back to an earlier build in one command, and forward again.

A rollback checks every file of the target version against the hashes recorded when it was published (a damaged
or tampered version is refused before anything changes), then restores the entry-point configs kept for that
version (`clf` and `clf_engine`, pinned to `clf.vN.tokenizer` / `clf.vN.engine`). A running `engineforge serve`
loads the target's models beside the serving ones and switches both entry points only once they are ready, so
every request is answered by one version or the other, never a mix; the command waits for its verdict and fails
with the server's reason if it could not load the version (the server then keeps serving what it served).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from engineforge.cli_support import run_command
from engineforge.defaults import DEFAULT_REPO, check_model_name
from engineforge.errors import ConfigError, RepositoryError, UsageError

from .model_layout import entry_model_names
from .published import CONFIG, entry_config_path, pinned, published_versions, replace_config, verify_version
from .serving_status import await_change, new_change_id


def serving_version(repo: str | os.PathLike[str], model: str) -> tuple[int, list[int]]:
    """(version the entry points are pinned to, versions on disk) of the published model."""
    repo = Path(repo)
    versions = published_versions(repo, model)
    if not versions or not (repo / model / CONFIG).is_file():
        raise RepositoryError(f"{repo} has no published model {model!r}; see the repository's directories or "
                              "publish with build-engine")
    return pinned(repo, model)[0], versions


def restore_entries(repo: Path, model: str, version: int, change_id: str) -> None:
    """Write the entry-point configs kept for `version`, marked with `change_id` (ids entry first: the supervisor
    acts when the text entry changes)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    for entry in reversed(entry_model_names(model)):
        config = text_format.Parse(entry_config_path(repo, model, version, entry).read_text(encoding="utf-8"),
                                   model_config_pb2.ModelConfig())
        config.parameters["change_id"].string_value = change_id
        replace_config(repo / entry, text_format.MessageToString(config))


def rollback(repo: str | os.PathLike[str], model: str, to_version: int | str | None = None,
             wait_s: float | None = 600.0) -> dict[str, Any]:
    """Serve `to_version` of `model` (default: the version before the one serving now; "latest": the newest)."""
    repo, model = Path(repo), check_model_name(model)
    current, versions = serving_version(repo, model)
    if to_version == "latest":
        target = max(versions)
    elif to_version is None:
        older = [v for v in versions if v < current]
        if not older:
            raise RepositoryError(f"{model!r} serves version {current}, the oldest on disk ({versions}): "
                                  "nothing to roll back to")
        target = max(older)
    else:
        target = int(to_version)
        if target not in versions:
            raise ConfigError(f"{model!r} has no version {target}; versions on disk: {versions}")
    verify_version(repo, model, target)  # refuse a damaged version before anything changes
    change_id = new_change_id()
    restore_entries(repo, model, target, change_id)
    served = await_change(repo, model, change_id, wait_s) if wait_s else None
    return {"model": model, "from": current, "to": target, "latest": target == max(versions), "served": served}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("rollback", help="serve an earlier published version (or --to latest)")
    parser.add_argument("--repo", default=DEFAULT_REPO, help="model repository (default: %(default)s)")
    parser.add_argument("--model", required=True, help="published model name")
    parser.add_argument("--to", default=None, help="version number, or 'latest' (default: the previous version)")
    parser.add_argument("--wait", type=float, default=600.0,
                        help="seconds to wait for a running `engineforge serve` to load it (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    def command() -> int:
        if args.to not in (None, "latest") and not str(args.to).isdigit():
            raise UsageError(f"--to {args.to!r}: give a version number or 'latest'")
        result = rollback(args.repo, args.model, args.to, wait_s=args.wait)
        where = ("a running `engineforge serve` now serves it" if result["served"] is not None
                 else "no `engineforge serve` runs on this repository; it serves this version when started")
        print(f"{result['model']}: version {result['from']} -> {result['to']}"
              + (" (latest)" if result["latest"] else " (`--to latest` goes back to the newest)") + f"; {where}")
        return 0

    return run_command("engineforge rollback", command)
