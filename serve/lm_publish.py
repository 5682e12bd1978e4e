"""Publish an LM engine bundle (lm/bundle.py) into a Triton model repository as a new version of one decoupled
python-backend model that streams tokens:

    repo/<name>/{config.pbtxt, versions.json, N/{model.py, lm_engine.json, model/, tokenizer/}}

One model, no entry points: Triton's default version policy serves the newest version, and a text prompt needs no
separate tokenizer hop (the model tokenizes and detokenizes as it streams). `versions.json` records each version's
build and the sha256 of its model and tokenizer files, which the served model checks before it loads (as encoder
versions are checked). Staged beside the repository and moved in with renames, like encoder publishes (staging.py),
so a polling Triton never sees half a version.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import py_compile
import shutil
import tempfile
from pathlib import Path

from engineforge.defaults import check_model_name
from engineforge.errors import ConfigError, RepositoryError
from engineforge.file_modes import make_readable
from engineforge.lm.bundle import SPEC_FILE, LMEngineSpec

from . import lm_compat
from .lm_requests import INPUTS, OUTPUTS, derive_lm_limits
from .model_config import InstanceGroup, ModelConfig, TensorSpec
from .model_layout import parse_version_model
from .published import CONFIG, MANIFEST, file_sha256, read_manifest, versions_in
from .staging import commit, locked

LM_KIND = "lm"  # versions.json "kind": what _refuse_foreign-style checks recognise as ours
LM_HASH_KEYS = {"model": "model_sha256", "tokenizer": "tokenizer_sha256"}
TASK_PARAMETER = "task"
_MODEL_PY = Path(__file__).resolve().parent / "triton" / "lm_model.py"
REQUIRED_INPUTS = ()  # TEXT or INPUT_IDS, one of the two: the model checks it, so both are optional to Triton


def check_lm_bundle(bundle_dir: str | os.PathLike[str]) -> LMEngineSpec:
    """The bundle's spec, once its model and tokenizer directories are there; RepositoryError says what is missing."""
    bundle = Path(bundle_dir)
    if not bundle.is_dir():
        raise RepositoryError(f"LM bundle {bundle} is not a directory; pass the LM build's output directory")
    try:
        spec = LMEngineSpec.load(bundle)
    except ConfigError as exc:
        raise RepositoryError(f"LM bundle {bundle}: {exc}") from exc
    for what, sub in (("model", spec.model_dir), ("tokenizer", spec.tokenizer_dir)):
        if not (bundle / sub).is_dir() or not any((bundle / sub).iterdir()):
            raise RepositoryError(f"LM bundle {bundle} lacks its {what} files in {sub}/ (named by {SPEC_FILE}); "
                                  "rebuild the bundle")
    return spec


def lm_model_config(model_name: str, spec: LMEngineSpec, *, max_prompt_tokens: int | None = None,
                    max_tokens_limit: int | None = None, max_sequences: int | None = None,
                    instances: int = 1) -> ModelConfig:
    """The decoupled model's config: every input optional to Triton (the model wants TEXT or INPUT_IDS, or Triton's
    LLM layout: lm_compat.py), the limits as `lm.*` parameters with their reasons."""
    limits = derive_lm_limits(spec.max_length, spec.max_batch, max_prompt_tokens=max_prompt_tokens,
                              max_tokens=max_tokens_limit, max_sequences=max_sequences)
    inputs = [TensorSpec(name, dtype, dims, optional=name not in REQUIRED_INPUTS)
              for name, (dtype, _, dims) in (INPUTS | lm_compat.INPUTS).items()]
    outputs = [TensorSpec(name, dtype, dims) for name, (dtype, dims) in (OUTPUTS | lm_compat.OUTPUTS).items()]
    parameters = limits.parameters() | {TASK_PARAMETER: spec.task, "runtime": spec.runtime,
                                        "precision": spec.precision}
    return ModelConfig(name=model_name, inputs=tuple(inputs), outputs=tuple(outputs), max_batch_size=0,
                       backend="python", instance_group=InstanceGroup(count=instances, kind="CPU"),
                       parameters=parameters, decoupled=True)


def publish_lm_bundle(bundle_dir: str | os.PathLike[str], repo_dir: str | os.PathLike[str], model_name: str, *,
                      max_prompt_tokens: int | None = None, max_tokens_limit: int | None = None,
                      max_sequences: int | None = None, instances: int = 1) -> Path:
    """Add the bundle as the next version of `repo_dir/model_name`; returns that version's directory. Limits left
    None are derived from the bundle's spec (lm_requests.derive_lm_limits); explicit ones may only tighten them."""
    bundle, repo = Path(bundle_dir).resolve(), Path(repo_dir)
    try:
        check_model_name(model_name)
    except ConfigError as exc:
        raise RepositoryError(str(exc)) from exc
    if parse_version_model(model_name) is not None:
        raise RepositoryError(f"model name {model_name!r} looks like one version's model (NAME.vN.engine); "
                              "choose another name")
    spec = check_lm_bundle(bundle)
    if instances < 1:
        raise RepositoryError(f"instances must be >= 1, got {instances}")
    try:
        config = lm_model_config(model_name, spec, max_prompt_tokens=max_prompt_tokens,
                                 max_tokens_limit=max_tokens_limit, max_sequences=max_sequences, instances=instances)
    except ConfigError as exc:
        raise RepositoryError(f"cannot publish {model_name!r}: {exc}") from exc
    if repo.exists() and not repo.is_dir():
        raise RepositoryError(f"model repository {repo} is a file; pass a directory")
    if not repo.exists():
        repo.mkdir(parents=True)
        make_readable(repo)  # for the server, which may run as another user
    target = repo / model_name
    with locked(repo):
        manifest = read_manifest(target) if target.exists() else {}
        if target.exists() and manifest.get("kind") != LM_KIND:
            raise RepositoryError(f"{target} exists but is not an LM engineforge published (its {MANIFEST} kind is "
                                  f"{manifest.get('kind')!r}); choose another model name or move it away")
        recorded = [int(v) for v in manifest.get("versions", {}) if v.isdigit()]
        version = 1 + max(recorded + versions_in(target), default=0)
        manifest = manifest or {"model": model_name, "kind": LM_KIND}
        manifest.setdefault("versions", {})[str(version)] = _record(bundle, spec)
        _stage_and_commit(bundle, spec, repo, config, manifest, version)
    return target / str(version)


def _record(bundle: Path, spec: LMEngineSpec) -> dict[str, str]:
    return {"runtime": spec.runtime, "precision": spec.precision, "family": spec.family, "bundle": str(bundle),
            LM_HASH_KEYS["model"]: file_sha256(bundle / spec.model_dir),
            LM_HASH_KEYS["tokenizer"]: file_sha256(bundle / spec.tokenizer_dir),
            "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def _stage_and_commit(bundle: Path, spec: LMEngineSpec, repo: Path, config: ModelConfig, manifest: dict,
                      version: int) -> None:
    staging: Path | None = None
    try:
        # Beside the repository (same filesystem: atomic renames) but outside it (Triton never sees half of it).
        staging = Path(tempfile.mkdtemp(prefix=f".{repo.name}.publish-", dir=repo.resolve().parent))
        staged = staging / config.name
        version_dir = staged / str(version)
        version_dir.mkdir(parents=True)
        shutil.copy2(_MODEL_PY, version_dir / "model.py")
        # Compiled now: the stub would otherwise write __pycache__ into the version directory (see staging.py).
        py_compile.compile(str(version_dir / "model.py"), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        shutil.copy2(bundle / SPEC_FILE, version_dir / SPEC_FILE)
        for sub in (spec.model_dir, spec.tokenizer_dir):
            shutil.copytree(bundle / sub, version_dir / sub)
        (staged / CONFIG).write_text(config.to_pbtxt(), encoding="utf-8")
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        commit(staging, repo, [config.name], version)
    except RepositoryError:
        raise
    except Exception as exc:
        raise RepositoryError(f"publishing {bundle} into {repo} failed, repository left unchanged: {exc}") from exc
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
