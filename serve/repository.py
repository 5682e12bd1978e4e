"""Publish an engine bundle into a Triton model repository as tokenizer + engine + ensemble models.

Layout written for model name `clf` (version N = one more than any existing version):

    repo/clf_tokenizer/{config.pbtxt, versions.json, N/{model.py, engine.json, tokenizer/...}}
    repo/clf_engine/{config.pbtxt, versions.json, N/{model.py, engine.json, model.onnx}}
                                                  (torch-bnb engines: model/ instead of model.onnx)
    repo/clf/{config.pbtxt, versions.json, N/}            (ensemble: TEXT -> LABEL, PROBABILITIES, LOGITS)

TensorRT engines are also published natively, into a second repository for standard Triton GPU servers:

    native_repo/clf_plan/{config.pbtxt, versions.json, N/{model.plan, engine.json}}   (platform tensorrt_plan)

Everything is staged in a temporary directory beside the repository, then moved in with renames;
any failure rolls back, so the repository is left as it was.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engineforge.defaults import DEFAULT_MODEL_NAME, DEFAULT_REPO, TOKENIZER_DIRNAME, check_model_name
from engineforge.errors import ConfigError, RepositoryError

from .engine_spec import ENGINE_SPEC_FILENAME, EngineSpec
from .model_config import WARMUP_DIR, ModelConfig
from .model_layout import PLAN_FILENAME, build_model_configs, build_plan_config

MANIFEST = "versions.json"
CONFIG = "config.pbtxt"
_TRITON_DIR = Path(__file__).resolve().parent / "triton"


@dataclass(frozen=True)
class PublishedModel:
    """Result of `publish_engine`: clients call `name` (the ensemble) or `engine_model` (token ids)."""

    name: str
    version: int
    repo_dir: Path
    build_id: str
    engine_model: str
    tokenizer_model: str
    native_plan: tuple[Path, str, int] | None = None  # (repository, model name, version) for TensorRT engines

    @property
    def model_names(self) -> tuple[str, str, str]:
        return (self.tokenizer_model, self.engine_model, self.name)


def check_bundle(bundle_dir: str | os.PathLike[str]) -> EngineSpec:
    """Validate an engine bundle's files; returns its spec or raises RepositoryError saying what is missing."""
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise RepositoryError(f"engine bundle {bundle} is not a directory; pass the build output directory")
    try:
        spec = EngineSpec.load(bundle)
    except ConfigError as exc:
        raise RepositoryError(f"engine bundle {bundle} has an unusable {ENGINE_SPEC_FILENAME}: {exc}") from exc
    model = bundle / spec.model_file
    if spec.model_is_directory:
        if not (model / "config.json").is_file():
            raise RepositoryError(
                f"engine bundle {bundle} lacks the {spec.runtime} model directory {spec.model_file}/ with a "
                f"config.json (named by {ENGINE_SPEC_FILENAME}); write it with model.save_pretrained()"
            )
    elif not model.is_file():
        raise RepositoryError(f"engine bundle {bundle} lacks {spec.model_file} (named by {ENGINE_SPEC_FILENAME})")
    tokenizer = bundle / TOKENIZER_DIRNAME
    if not (tokenizer / "tokenizer.json").is_file() and not (tokenizer / "tokenizer_config.json").is_file():
        raise RepositoryError(
            f"engine bundle {bundle} lacks a Hugging Face tokenizer in {TOKENIZER_DIRNAME}/ "
            "(tokenizer.json or tokenizer_config.json); save it with tokenizer.save_pretrained()"
        )
    return spec


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


def _sha256(path: Path) -> str:
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
    """Write a model's config.pbtxt atomically: a polling supervisor or Triton never reads half a config."""
    path = model_dir / CONFIG
    temporary = model_dir / f".{CONFIG}.tmp"
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path


def verify_published_engine(version_dir: Path, spec: EngineSpec) -> None:
    """Refuse an engine whose file differs from what was published (tampered with, or damaged): the hash in
    the model's versions.json, written at publish time from the build's bundle, must match."""
    record = read_manifest(version_dir.parent).get("versions", {}).get(version_dir.name)
    if not record or "model_sha256" not in record:
        raise RepositoryError(f"{version_dir}: no published hash in {version_dir.parent / MANIFEST}; "
                              "republish the engine with engineforge")
    actual = _sha256(version_dir / spec.model_file)
    if actual != record["model_sha256"]:
        raise RepositoryError(f"{version_dir / spec.model_file}: sha256 {actual[:16]}… differs from the published "
                              f"{record['model_sha256'][:16]}… ({MANIFEST}); the file was changed after publishing: "
                              "refusing to load it; republish the build")


def _copy(src: Path, dst: Path) -> None:
    # Indirection so tests can inject a failure part-way through staging.
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def _locked(repo: Path) -> Iterator[None]:
    # Serialises concurrent publishers; Triton ignores plain files in the repository root.
    with open(repo / ".engineforge-publish.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stage_version(kind: str, bundle: Path, spec: EngineSpec, version_dir: Path) -> None:
    version_dir.mkdir(parents=True)
    if kind == "ensemble":
        return  # Triton requires the version directory of an ensemble to exist, empty
    if kind == "plan":  # Triton's TensorRT backend reads the plan; engine.json keeps its metadata beside it
        _copy(bundle / spec.model_file, version_dir / PLAN_FILENAME)
        _copy(bundle / ENGINE_SPEC_FILENAME, version_dir / ENGINE_SPEC_FILENAME)
        return
    source = "engine_model.py" if kind == "engine" else "tokenizer_model.py"
    _copy(_TRITON_DIR / source, version_dir / "model.py")
    _copy(bundle / ENGINE_SPEC_FILENAME, version_dir / ENGINE_SPEC_FILENAME)
    if kind == "engine":
        _copy(bundle / spec.model_file, version_dir / spec.model_file)
        external = bundle / f"{spec.model_file}.data"  # ONNX external weights (models > 2 GB)
        if external.is_file():
            _copy(external, version_dir / external.name)
    else:
        _copy(bundle / TOKENIZER_DIRNAME, version_dir / TOKENIZER_DIRNAME)


def publish_engine(
    bundle_dir: str | os.PathLike[str],
    repo_dir: str | os.PathLike[str] = DEFAULT_REPO,
    model_name: str = DEFAULT_MODEL_NAME,
    *,
    max_batch_size: int = 32,
    max_queue_delay_us: int | None = None,
    instances: int | None = None,
    native_repo_dir: str | os.PathLike[str] | None = None,
    measured_latency_ms: float | None = None,
    warmup: bool = True,
) -> PublishedModel:
    """Add the bundle as a new version of `<model_name>`, `<model_name>_engine`, `<model_name>_tokenizer`; a
    TensorRT bundle also as `<model_name>_plan` in `native_repo_dir` (default: `<repo_dir>-tensorrt`).

    Queue delay and instances left as None are derived from the engine and this machine's cores (queue delay 0,
    instances = cores // engine threads); see serving_defaults. `measured_latency_ms` (the build's batch-1 latency)
    is quoted in the config's reasons."""
    bundle = Path(bundle_dir).resolve()
    repo = Path(repo_dir)
    try:
        check_model_name(model_name)
    except ConfigError as exc:
        raise RepositoryError(str(exc)) from exc
    spec = check_bundle(bundle)
    try:
        configs = build_model_configs(model_name, spec, max_batch_size=max_batch_size,
                                      max_queue_delay_us=max_queue_delay_us, instances=instances,
                                      measured_latency_ms=measured_latency_ms, warmup=warmup)
        derived = configs["engine"]  # the plan model gets the same derived delay and instance count
        plan = None if spec.tensorrt is None else build_plan_config(
            model_name, spec, max_batch_size=max_batch_size,
            max_queue_delay_us=derived.dynamic_batching.max_queue_delay_us, instances=derived.instance_group.count)
    except ConfigError as exc:
        raise RepositoryError(f"cannot publish {model_name!r}: {exc}") from exc
    # Composing models first, ensemble last, so the ensemble never points at missing models.
    version = _publish_models(bundle, spec, repo, {k: configs[k] for k in ("tokenizer", "engine", "ensemble")})
    native = None
    if plan is not None:
        native_repo = Path(native_repo_dir) if native_repo_dir is not None else repo.with_name(repo.name + "-tensorrt")
        native = (native_repo, plan.name, _publish_models(bundle, spec, native_repo, {"plan": plan}))
    return PublishedModel(
        name=configs["ensemble"].name,
        version=version,
        repo_dir=repo,
        build_id=spec.build_id,
        engine_model=configs["engine"].name,
        tokenizer_model=configs["tokenizer"].name,
        native_plan=native,
    )


def _publish_models(bundle: Path, spec: EngineSpec, repo: Path, configs: dict[str, ModelConfig]) -> int:
    """Stage every model's new version beside `repo`, then rename them in, in the order given; returns it."""
    if repo.exists() and not repo.is_dir():
        raise RepositoryError(f"model repository {repo} is a file; pass a directory (default {DEFAULT_REPO}/)")
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RepositoryError(f"cannot create model repository {repo}: {exc}") from exc

    with _locked(repo):
        model_dirs = {kind: repo / config.name for kind, config in configs.items()}
        for path in model_dirs.values():
            if path.exists() and not (path / MANIFEST).is_file():
                raise RepositoryError(
                    f"{path} exists but was not published by engineforge (no {MANIFEST}); "
                    "choose another model name or move that directory away"
                )
        version = 1 + max((v for p in model_dirs.values() for v in versions_in(p)), default=0)
        staging: Path | None = None
        try:
            record = {
                "build_id": spec.build_id,
                "source_checkpoint": spec.source_checkpoint,
                "precision": spec.precision,
                "bundle": str(bundle),
                "model_sha256": _sha256(bundle / spec.model_file),
                "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            # Beside the repository (same filesystem, so renames are atomic) but outside it, so a
            # polling Triton never sees half-written models.
            staging = Path(tempfile.mkdtemp(prefix=f".{repo.name}.publish-", dir=repo.resolve().parent))
            for kind, config in configs.items():
                staged = staging / config.name
                _stage_version(kind, bundle, spec, staged / str(version))
                (staged / CONFIG).write_text(config.to_pbtxt(), encoding="utf-8")
                for filename, data in config.warmup_files.items():  # Triton reads them from <model>/warmup/
                    (staged / WARMUP_DIR).mkdir(exist_ok=True)
                    (staged / WARMUP_DIR / filename).write_bytes(data)
                manifest = read_manifest(model_dirs[kind]) or {"model": config.name, "kind": kind}
                manifest.setdefault("versions", {})[str(version)] = record
                (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            _commit(staging, model_dirs, [config.name for config in configs.values()], version)
        except RepositoryError:
            raise
        except Exception as exc:
            raise RepositoryError(f"publishing {bundle} into {repo} failed, repository left unchanged: {exc}") from exc
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
    return version


def _commit(staging: Path, model_dirs: dict[str, Path], order: list[str], version: int) -> None:
    """Move staged files in with renames; on any failure undo the renames already done."""
    undo: list[Callable[[], None]] = []
    targets = {path.name: path for path in model_dirs.values()}
    try:
        for name in order:
            staged, target = staging / name, targets[name]
            if not target.exists():
                os.rename(staged, target)
                undo.append(lambda t=target: shutil.rmtree(t))
                continue
            os.rename(staged / str(version), target / str(version))
            undo.append(lambda t=target: shutil.rmtree(t / str(version)))
            warmup = sorted(p.relative_to(staged).as_posix() for p in (staged / WARMUP_DIR).glob("*"))
            for filename in (CONFIG, MANIFEST, *warmup):
                (target / filename).parent.mkdir(exist_ok=True)
                old = (target / filename).read_bytes() if (target / filename).exists() else None
                os.replace(staged / filename, target / filename)
                undo.append(lambda t=target / filename, o=old: t.write_bytes(o) if o is not None else t.unlink())
    except BaseException:
        for action in reversed(undo):
            with contextlib.suppress(OSError):
                action()
        raise
