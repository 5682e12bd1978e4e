"""Reading what engineforge published into a repository: manifests, hashes, versions and the entry-point configs
kept for each version. Writing happens in repository.py (publish) and versions.py (rollback).

For published name `clf` the text entry point's directory `clf/` holds the model's manifest (`versions.json`: one
record per version, with the build and the sha256 of its engine and tokenizer) and, in `entries/<N>/`, the two
entry-point configs that serve version N, so a rollback restores exactly what was published.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import RepositoryError
from engineforge.file_modes import atomic_write

from .model_layout import ROLES, engine_model_name, version_model_name

MANIFEST = "versions.json"
CONFIG = "config.pbtxt"
ENTRIES_DIR = "entries"  # in the text entry point's directory: entries/<N>/<model>.pbtxt
HASH_KEYS = {"engine": "model_sha256", "tokenizer": "tokenizer_sha256"}


def versions_in(model_dir: Path) -> list[int]:
    """The version numbers published in a model directory, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def read_manifest(model_dir: Path) -> dict:
    path = model_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path}: unreadable manifest ({exc}); fix or delete it") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("versions", {}), dict):
        raise RepositoryError(f"{path}: malformed manifest; expected an object with a 'versions' object")
    return manifest


def file_sha256(path: Path) -> str:
    """Digest of a file, or of a directory's files (relative names and contents, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def replace_config(model_dir: Path, text: str) -> Path:
    """Write a model's config.pbtxt atomically (a polling supervisor or Triton never reads half a config),
    readable by the server's user."""
    return atomic_write(model_dir / CONFIG, text, published=True)


def verify_published_files(version_dir: Path, files: dict[str, str]) -> None:
    """Refuse files that differ from what was published (tampered with, or damaged): for each {manifest key:
    path relative to version_dir}, the sha256 recorded in the model's versions.json at publish time must match."""
    manifest = version_dir.parent / MANIFEST
    record = read_manifest(version_dir.parent).get("versions", {}).get(version_dir.name)
    for key, relative in files.items():
        if not record or key not in record:
            raise RepositoryError(f"{version_dir}: no published hash ({key}) in {manifest}; republish the engine "
                                  "with engineforge")
        actual = file_sha256(version_dir / relative)
        if actual != record[key]:
            raise RepositoryError(f"{version_dir / relative}: sha256 {actual} differs from the published "
                                  f"{record[key]} ({manifest}); it was changed after publishing, so it is refused: "
                                  "republish the build or roll back to another version")


def verify_published_engine(version_dir: Path, spec: EngineSpec) -> None:
    verify_published_files(version_dir, {HASH_KEYS["engine"]: spec.model_file})


def version_models(repo: Path, model: str, version: int) -> list[str]:
    """The models of one published version on disk, in load order: `clf.vN.engine` alone (one-hop text layout) or
    `clf.vN.tokenizer` and `clf.vN.engine` (two-hop). A version always has its engine; the tokenizer model is
    there exactly when it was published two-hop, so the directories say which layout a version has."""
    names = [version_model_name(model, version, role) for role in ROLES]
    return [name for name in names if (repo / name / str(version)).is_dir()]


def verify_version(repo: Path, model: str, version: int) -> None:
    """Check every file of a published version against its hashes before anything serves it (the tokenizer is
    checked where that version serves it from: its tokenizer model, or beside a one-hop engine)."""
    from engineforge.defaults import TOKENIZER_DIRNAME

    engine_dir = repo / version_model_name(model, version, "engine") / str(version)
    verify_published_engine(engine_dir, EngineSpec.load(engine_dir))
    tokenizer_dir = repo / version_model_name(model, version, "tokenizer") / str(version)
    verify_published_files(tokenizer_dir if tokenizer_dir.is_dir() else engine_dir,
                           {HASH_KEYS["tokenizer"]: TOKENIZER_DIRNAME})


def published_versions(repo: Path, model: str) -> list[int]:
    """Versions of `model` whose engine model and entry-point configs are on disk, ascending."""
    recorded = read_manifest(repo / model).get("versions", {})
    return sorted(int(v) for v in recorded if v.isdigit()
                  and (repo / version_model_name(model, int(v), "engine") / v).is_dir()
                  and entry_config_path(repo, model, int(v), model).is_file())


def pinned(repo: Path, model: str) -> tuple[int, str]:
    """(version, change_id) the text entry point's config on disk asks for."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = repo / model / CONFIG
    config = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    versions = list(config.version_policy.specific.versions)
    if len(versions) != 1:
        raise RepositoryError(f"{path}: not pinned to one version (found {versions}): published by an older "
                              "engineforge; publish the build again into a new repository")
    change = config.parameters["change_id"].string_value if "change_id" in config.parameters else ""
    return versions[0], change


def entry_config_path(repo: Path, model: str, version: int, entry: str) -> Path:
    """Where the config of entry point `entry` (the model or its `_engine`) serving `version` is kept."""
    if entry not in (model, engine_model_name(model)):
        raise ValueError(f"{entry!r} is not an entry point of {model!r}")
    return repo / model / ENTRIES_DIR / str(version) / f"{entry}.pbtxt"
