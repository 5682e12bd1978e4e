"""Sizes and digests of the files a build reads and writes."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_mb(path: Path) -> float:
    """Size of an ONNX model including external-data files beside it, or of a model directory."""
    path = Path(path)
    if path.is_dir():
        return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6, 2)
    total = path.stat().st_size
    data = path.with_suffix(path.suffix + ".data")
    if data.exists():
        total += data.stat().st_size
    return round(total / 1e6, 2)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
