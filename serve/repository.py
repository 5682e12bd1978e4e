"""Publish an engine bundle into a Triton model repository as a new version.

Layout for model name `clf`, version N (one more than any before; see model_layout for why):

    repo/clf.vN.engine/{config.pbtxt, versions.json, N/{model.py, engine.json, model.onnx, tokenizer/...}}
                                                   (torch-bnb engines: model/ instead of model.onnx)
    repo/clf.vN.tokenizer/{config.pbtxt, versions.json, N/{model.py, engine.json, tokenizer/...}}
                                                   (text_path "two-hop" only; its engine then has no tokenizer/)
    repo/clf_engine/{config.pbtxt, versions.json, N/}   (entry point: token ids -> outputs, pinned to clf.vN.engine)
    repo/clf/{config.pbtxt, versions.json, N/, entries/N/{clf,clf_engine}.pbtxt}
                                                   (entry point: TEXT -> outputs; versions.json is the model's record)

TensorRT engines are also published natively, into a second repository for standard Triton GPU servers:

    native_repo/clf_plan/{config.pbtxt, versions.json, N/{model.plan, engine.json}}   (platform tensorrt_plan)

Everything is staged in a temporary directory beside the repository, then moved in with renames (the version's
own models first, the entry points last); any failure rolls back, so the repository is left as it was. When an
`engineforge serve` runs on the repository, publishing waits for it to load the new version and fails with the
server's reason if it could not (the server then keeps serving the previous version).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engineforge.defaults import DEFAULT_MODEL_NAME, DEFAULT_REPO, TOKENIZER_DIRNAME, check_model_name
from engineforge.engines.engine_spec import ENGINE_SPEC_FILENAME, EngineSpec
from engineforge.engines.request_limits import DEFAULT_LONG_TEXTS
from engineforge.errors import ConfigError, RepositoryError
from engineforge.file_modes import make_readable

from .model_config import ModelConfig
from .model_layout import (
    ROLES,
    build_model_configs,
    engine_model_name,
    parse_version_model,
)
from .native_plan import build_plan_config
from .published import (
    ENTRIES_DIR,
    HASH_KEYS,
    MANIFEST,
    entry_config_path,
    file_sha256,
    read_manifest,
    versions_in,
)
from .serving_defaults import DEFAULT_TEXT_PATH
from .serving_status import await_change, new_change_id
from .staging import commit, locked, stage_model


@dataclass(frozen=True)
class PublishedModel:
    """Result of `publish_engine`: clients call `name` (text) or `engine_model` (token ids); `version_models` are
    the models of this version (the engine; tokenizer and engine when published two-hop), which those entry
    points run."""

    name: str
    version: int
    repo_dir: Path
    build_id: str
    engine_model: str
    version_models: tuple[str, ...]
    native_plan: tuple[Path, str, int] | None = None  # (repository, model name, version) for TensorRT engines
    served: str | None = None  # the running server's word on it, when one serves the repository

    @property
    def model_names(self) -> tuple[str, ...]:
        return (*self.version_models, self.engine_model, self.name)


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
    long_texts: str = DEFAULT_LONG_TEXTS,
    text_path: str = DEFAULT_TEXT_PATH,
    wait_s: float | None = 600.0,
) -> PublishedModel:
    """Add the bundle as a new version of `<model_name>` (see the module's layout); a TensorRT bundle also as
    `<model_name>_plan` in `native_repo_dir` (default: `<repo_dir>-tensorrt`).

    Queue delay and instances left as None are derived from the engine and this machine's cores (queue delay 0,
    instances = cores // engine threads); see serving_defaults. `measured_latency_ms` (the build's batch-1 latency)
    is quoted in the config's reasons; `long_texts` ("truncate" or "refuse") says what the served model does with
    texts over its limits (request_limits.py); `text_path` ("one-hop" or "two-hop") how text reaches the engine
    (model_layout.py). With `wait_s`, a running `engineforge serve` on the repository is
    waited for (that long) until it serves the new version; RepositoryError if it refused it."""
    bundle = Path(bundle_dir).resolve()
    repo = Path(repo_dir)
    try:
        check_model_name(model_name)
    except ConfigError as exc:
        raise RepositoryError(str(exc)) from exc
    if parse_version_model(model_name) is not None:
        raise RepositoryError(f"model name {model_name!r} looks like one version's model (NAME.vN.engine); "
                              "choose another name")
    spec = check_bundle(bundle)
    _make_repo(repo)
    change_id = new_change_id()
    with locked(repo):
        _refuse_foreign(repo, model_name)
        version = _next_version(repo, model_name)
        try:
            configs = build_model_configs(model_name, spec, version=version, max_batch_size=max_batch_size,
                                          max_queue_delay_us=max_queue_delay_us, instances=instances,
                                          measured_latency_ms=measured_latency_ms, warmup=warmup, change_id=change_id,
                                          long_texts=long_texts, text_path=text_path)
        except ConfigError as exc:
            raise RepositoryError(f"cannot publish {model_name!r}: {exc}") from exc
        _publish_version(bundle, spec, repo, configs, version)
    native = _publish_native(bundle, spec, repo, model_name, configs["engine"], native_repo_dir, max_batch_size)
    served = await_change(repo, model_name, change_id, wait_s) if wait_s else None
    return PublishedModel(name=model_name, version=version, repo_dir=repo, build_id=spec.build_id,
                          engine_model=configs["ids"].name,
                          version_models=tuple(configs[role].name for role in ROLES if role in configs),
                          native_plan=native, served=served)


def _make_repo(repo: Path) -> None:
    if repo.exists() and not repo.is_dir():
        raise RepositoryError(f"model repository {repo} is a file; pass a directory (default {DEFAULT_REPO}/)")
    created = not repo.exists()
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RepositoryError(f"cannot create model repository {repo}: {exc}") from exc
    if created:  # one engineforge made is for the server, which may run as another user
        make_readable(repo)


def _refuse_foreign(repo: Path, model: str) -> None:
    """Only ever add to what engineforge itself published under this name, in this layout."""
    for entry, kind in ((model, "ensemble"), (engine_model_name(model), "ids")):
        path = repo / entry
        if not path.exists():
            continue
        found = read_manifest(path).get("kind") if (path / MANIFEST).is_file() else None
        if found is None:
            raise RepositoryError(f"{path} exists but was not published by engineforge (no {MANIFEST}); "
                                  "choose another model name or move that directory away")
        if found != kind:
            raise RepositoryError(f"{repo} holds {model!r} in the layout of an older engineforge ({path.name} is a "
                                  f"{found} model); publish under a new name, or move {model}, {model}_engine and "
                                  f"{model}_tokenizer out of the repository and publish again")


def _next_version(repo: Path, model: str) -> int:
    recorded = [int(v) for v in read_manifest(repo / model).get("versions", {}) if v.isdigit()]
    on_disk = [parsed[1] for p in repo.iterdir() if (parsed := parse_version_model(p.name)) and parsed[0] == model]
    return 1 + max(recorded + on_disk, default=0)


def _record(bundle: Path, spec: EngineSpec) -> dict[str, str]:
    return {
        "build_id": spec.build_id,
        "source_checkpoint": spec.source_checkpoint,
        "precision": spec.precision,
        "bundle": str(bundle),
        HASH_KEYS["engine"]: file_sha256(bundle / spec.model_file),
        HASH_KEYS["tokenizer"]: file_sha256(bundle / TOKENIZER_DIRNAME),
        "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _publish_version(bundle: Path, spec: EngineSpec, repo: Path, configs: dict[str, ModelConfig],
                     version: int) -> None:
    """Stage the version's models and the entry points beside `repo`, then rename them in."""
    record = _record(bundle, spec)
    order = [*(r for r in ROLES if r in configs), "ids", "ensemble"]  # the version's models first, entries last
    staging: Path | None = None
    try:
        # Beside the repository (same filesystem, so renames are atomic) but outside it, so a polling Triton
        # never sees half-written models.
        staging = Path(tempfile.mkdtemp(prefix=f".{repo.name}.publish-", dir=repo.resolve().parent))
        for kind in order:
            config = configs[kind]
            target = repo / config.name
            if kind in ROLES and target.exists():
                raise RepositoryError(f"{target} already exists (left by an interrupted publish?); move it away")
            stage_model(staging / config.name, config, kind, bundle, spec, version,
                         read_manifest(target) or {"model": config.name, "kind": kind}, record)
        entries = staging / configs["ensemble"].name / ENTRIES_DIR / str(version)
        entries.mkdir(parents=True)
        for kind in ("ensemble", "ids"):  # what a rollback to this version restores
            (entries / f"{configs[kind].name}.pbtxt").write_text(configs[kind].to_pbtxt(), encoding="utf-8")
        commit(staging, repo, [configs[kind].name for kind in order], version)
    except RepositoryError:
        raise
    except Exception as exc:
        raise RepositoryError(f"publishing {bundle} into {repo} failed, repository left unchanged: {exc}") from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    if not entry_config_path(repo, configs["ensemble"].name, version, configs["ensemble"].name).is_file():
        raise RepositoryError(f"publishing into {repo} left no entry-point configs for version {version}")


def _publish_native(bundle: Path, spec: EngineSpec, repo: Path, model_name: str, engine: ModelConfig,
                    native_repo_dir: str | os.PathLike[str] | None, max_batch_size: int
                    ) -> tuple[Path, str, int] | None:
    """A TensorRT bundle's plan as its own model in a second repository (versions as Triton knows them)."""
    if spec.tensorrt is None:
        return None
    try:  # the plan model gets the engine's derived delay and instance count
        plan = build_plan_config(model_name, spec, max_batch_size=max_batch_size,
                                 max_queue_delay_us=engine.dynamic_batching.max_queue_delay_us,  # type: ignore[union-attr]
                                 instances=engine.instance_group.count)  # type: ignore[union-attr]
    except ConfigError as exc:
        raise RepositoryError(f"cannot publish {model_name!r}: {exc}") from exc
    native_repo = Path(native_repo_dir) if native_repo_dir is not None else repo.with_name(repo.name + "-tensorrt")
    _make_repo(native_repo)
    target = native_repo / plan.name
    with locked(native_repo):
        if target.exists() and not (target / MANIFEST).is_file():
            raise RepositoryError(f"{target} exists but was not published by engineforge (no {MANIFEST}); "
                                  "choose another model name or move that directory away")
        version = 1 + max(versions_in(target), default=0)
        staging = Path(tempfile.mkdtemp(prefix=f".{native_repo.name}.publish-", dir=native_repo.resolve().parent))
        try:
            stage_model(staging / plan.name, plan, "plan", bundle, spec, version,
                         read_manifest(target) or {"model": plan.name, "kind": "plan"}, _record(bundle, spec))
            commit(staging, native_repo, [plan.name], version)
        except RepositoryError:
            raise
        except Exception as exc:
            raise RepositoryError(f"publishing {bundle} into {native_repo} failed, left unchanged: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return native_repo, plan.name, version
