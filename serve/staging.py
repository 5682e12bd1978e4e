"""Staging a publish beside the repository and moving it in with renames, all or nothing: a polling Triton or
supervisor never sees half a model, and a failure part-way leaves the repository as it was."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import py_compile
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from engineforge.defaults import TOKENIZER_DIRNAME
from engineforge.engines.engine_spec import ENGINE_SPEC_FILENAME, EngineSpec
from engineforge.file_modes import make_readable

from .model_config import WARMUP_DIR, ModelConfig
from .native_plan import PLAN_FILENAME
from .published import CONFIG, ENTRIES_DIR, MANIFEST
from .serving_defaults import TEXT_PATH_PARAMETER

_TRITON_DIR = Path(__file__).resolve().parent / "triton"
ENTRY_KINDS = ("ensemble", "ids")


def copy_file(src: Path, dst: Path) -> None:
    # Indirection so tests can inject a failure part-way through staging.
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def locked(repo: Path) -> Iterator[None]:
    # Serialises concurrent publishers; Triton ignores plain files in the repository root.
    with open(repo / ".engineforge-publish.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stage_version(kind: str, bundle: Path, spec: EngineSpec, version_dir: Path, with_tokenizer: bool = False) -> None:
    """The version directory of one model; `with_tokenizer`: an engine that tokenizes TEXT itself (one-hop) gets the
    bundle's tokenizer beside it."""
    version_dir.mkdir(parents=True)
    if kind in ENTRY_KINDS:
        return  # Triton requires the version directory of an ensemble to exist, empty
    if kind == "plan":  # Triton's TensorRT backend reads the plan; engine.json keeps its metadata beside it
        copy_file(bundle / spec.model_file, version_dir / PLAN_FILENAME)
        copy_file(bundle / ENGINE_SPEC_FILENAME, version_dir / ENGINE_SPEC_FILENAME)
        return
    source = "engine_model.py" if kind == "engine" else "tokenizer_model.py"
    copy_file(_TRITON_DIR / source, version_dir / "model.py")
    # Compiled now: the stub would write __pycache__ into the version directory on import (it ignores
    # PYTHONDONTWRITEBYTECODE), and Triton then takes the model for modified and reloads it with every ensemble load.
    py_compile.compile(str(version_dir / "model.py"), doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    copy_file(bundle / ENGINE_SPEC_FILENAME, version_dir / ENGINE_SPEC_FILENAME)
    if kind == "engine":
        copy_file(bundle / spec.model_file, version_dir / spec.model_file)
        external = bundle / f"{spec.model_file}.data"  # ONNX external weights (models > 2 GB)
        if external.is_file():
            copy_file(external, version_dir / external.name)
    if kind != "engine" or with_tokenizer:
        copy_file(bundle / TOKENIZER_DIRNAME, version_dir / TOKENIZER_DIRNAME)


def stage_model(staged: Path, config: ModelConfig, kind: str, bundle: Path, spec: EngineSpec, version: int,
                 manifest: dict, record: dict[str, str]) -> None:
    one_hop = config.parameters.get(TEXT_PATH_PARAMETER) == "one-hop"
    stage_version(kind, bundle, spec, staged / str(version), with_tokenizer=one_hop)
    (staged / CONFIG).write_text(config.to_pbtxt(), encoding="utf-8")
    for filename, data in config.warmup_files.items():  # Triton reads them from <model>/warmup/
        (staged / WARMUP_DIR).mkdir(exist_ok=True)
        (staged / WARMUP_DIR / filename).write_bytes(data)
    manifest.setdefault("versions", {})[str(version)] = record
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def commit(staging: Path, repo: Path, order: list[str], version: int) -> None:
    """Move staged models in with renames (a new model whole; a new version into an existing model, then its config,
    manifest, warmup files and kept entry configs); on any failure undo the renames already done."""
    make_readable(staging)  # tritonserver may run as another user: what it serves must be readable by it
    undo: list[Callable[[], None]] = []
    try:
        for name in order:
            staged, target = staging / name, repo / name
            if not target.exists():
                os.rename(staged, target)
                undo.append(lambda t=target: shutil.rmtree(t))
                continue
            moved = [str(version), f"{ENTRIES_DIR}/{version}"]
            for relative in (m for m in moved if (staged / m).is_dir()):
                (target / relative).parent.mkdir(exist_ok=True)
                os.rename(staged / relative, target / relative)
                undo.append(lambda t=target / relative: shutil.rmtree(t))
            warmup = sorted(p.relative_to(staged).as_posix() for p in (staged / WARMUP_DIR).glob("*"))
            for filename in (MANIFEST, *warmup, CONFIG):  # the config last: it is what a watcher reacts to
                (target / filename).parent.mkdir(exist_ok=True)
                old = (target / filename).read_bytes() if (target / filename).exists() else None
                os.replace(staged / filename, target / filename)
                undo.append(lambda t=target / filename, o=old: t.write_bytes(o) if o is not None else t.unlink())
    except BaseException:
        for action in reversed(undo):
            with contextlib.suppress(OSError):
                action()
        raise
