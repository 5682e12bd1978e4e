"""What a Triton model repository holds: every model directory with its kind, versions and builds."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from engineforge.defaults import DEFAULT_REPO
from engineforge.errors import RepositoryError

from .published import CONFIG, read_manifest, versions_in


@dataclass(frozen=True)
class RepositoryModel:
    """One model directory as found in a repository."""

    name: str
    kind: str  # "ensemble", a backend name such as "python", or "unknown"
    versions: tuple[int, ...]
    builds: dict[int, str] = field(default_factory=dict, hash=False)  # version -> build_id

    @property
    def latest_version(self) -> int | None:
        return max(self.versions) if self.versions else None



def list_published(repo_dir: str | os.PathLike[str] = DEFAULT_REPO) -> list[RepositoryModel]:
    """Every model directory in the repository with its versions (and builds, when engineforge published it)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo = Path(repo_dir)
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist or is not a directory")
    models = []
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        kind = "unknown"
        if (model_dir / CONFIG).is_file():
            with contextlib.suppress(text_format.ParseError, OSError):
                config = text_format.Parse((model_dir / CONFIG).read_text(), model_config_pb2.ModelConfig())
                kind = config.platform or config.backend or "unknown"
        manifest = read_manifest(model_dir).get("versions", {})
        builds = {int(v): str(r.get("build_id", "")) for v, r in manifest.items() if v.isdigit()}
        models.append(RepositoryModel(model_dir.name, kind, tuple(versions_in(model_dir)), builds))
    return models
