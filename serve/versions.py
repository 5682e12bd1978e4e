"""Which published version serves: roll back to an earlier build in one command, and forward again.

A rollback pins every model of the published name (tokenizer, engine, ensemble) to one version through
Triton's `version_policy { specific }` in config.pbtxt; the running `engineforge serve` sees the configs
change and reloads them, composing models first, so requests keep flowing. `latest` removes the pin; a new
publish writes fresh configs and so serves its new version.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from engineforge.cli_support import run_command
from engineforge.defaults import DEFAULT_REPO, check_model_name
from engineforge.errors import ConfigError, RepositoryError, UsageError

from .model_layout import engine_model_name, tokenizer_model_name
from .repository import CONFIG, replace_config, versions_in


def _members(repo: Path, model: str) -> list[Path]:
    dirs = [repo / tokenizer_model_name(model), repo / engine_model_name(model), repo / model]
    missing = [d.name for d in dirs if not (d / CONFIG).is_file()]
    if missing:
        raise RepositoryError(f"{repo} has no published model {model!r} (missing {missing}); "
                              "see `ls` of the repository or publish with build-engine")
    return dirs


def serving_version(repo: Path, model: str) -> tuple[int | None, list[int]]:
    """(pinned version or None for latest, versions on disk) of the published model."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    engine = _members(repo, model)[1]
    config = text_format.Parse((engine / CONFIG).read_text(), model_config_pb2.ModelConfig())
    pinned = list(config.version_policy.specific.versions) if config.version_policy.HasField("specific") else []
    return (pinned[0] if pinned else None), versions_in(engine)


def rollback(repo: str | os.PathLike[str], model: str, to_version: int | str | None = None) -> dict[str, Any]:
    """Pin `model` to `to_version` (default: the version before the one serving now); "latest" unpins."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo, model = Path(repo), check_model_name(model)
    dirs = _members(repo, model)
    pinned, versions = serving_version(repo, model)
    current = pinned or max(versions, default=0)
    if to_version == "latest":
        target: int | None = None
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
    for model_dir in dirs:
        if target is not None and target not in versions_in(model_dir):
            raise RepositoryError(f"{model_dir} lacks version {target}; it cannot serve it")
    for model_dir in dirs:
        config = text_format.Parse((model_dir / CONFIG).read_text(), model_config_pb2.ModelConfig())
        config.ClearField("version_policy")
        if target is not None:
            config.version_policy.specific.versions.append(target)
        replace_config(model_dir, text_format.MessageToString(config))
    return {"model": model, "from": current, "to": target or max(versions), "pinned": target is not None}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("rollback", help="serve an earlier published version (or --to latest)")
    parser.add_argument("--repo", default=DEFAULT_REPO, help="model repository (default: %(default)s)")
    parser.add_argument("--model", required=True, help="published model name")
    parser.add_argument("--to", default=None, help="version number, or 'latest' (default: the previous version)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    def command() -> int:
        if args.to not in (None, "latest") and not str(args.to).isdigit():
            raise UsageError(f"--to {args.to!r}: give a version number or 'latest'")
        result = rollback(args.repo, args.model, args.to)
        print(f"{result['model']}: version {result['from']} -> {result['to']}"
              + (" (pinned; `--to latest` unpins)" if result["pinned"] else " (latest)")
              + "; a running `engineforge serve` reloads it within a second")
        return 0

    return run_command("engineforge rollback", command)
