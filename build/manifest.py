"""Build manifest: enough to reproduce a build and to prove which files it produced."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .files import sha256_file
from .report import BuildReport


def _hash_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def build_manifest(report: BuildReport, checkpoint: Path, data_files: dict[str, Path | None],
                   bundle_dir: Path | None) -> dict[str, Any]:
    """Inputs (checkpoint files, data, recipe, versions) and outputs (bundle file hashes)."""
    checkpoint = Path(checkpoint)
    inputs = {name: sha256_file(checkpoint / name) for name in ("config.json", "model.safetensors",
                                                                "pytorch_model.bin", "tokenizer.json")
              if (checkpoint / name).is_file()}
    return {
        "build_id": report.build_id,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": report.status,
        "checkpoint": {"path": str(checkpoint), "sha256": inputs},
        "data": {kind: {"path": str(path), "sha256": sha256_file(path)}
                 for kind, path in data_files.items() if path is not None and Path(path).is_file()},
        "recipe": report.recipe,
        "settings": report.settings,
        "versions": report.versions,
        "outputs": _hash_tree(bundle_dir) if bundle_dir is not None and bundle_dir.is_dir() else {},
    }


def write_manifest(manifest: dict[str, Any], out_dir: Path) -> Path:
    path = Path(out_dir) / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
