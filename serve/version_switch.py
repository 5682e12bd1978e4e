"""Switching a published model from one version to another on a live Triton, so that no request is ever answered by
a mix of versions and the old version keeps serving until the new one is ready.

1. Load the target version's own models (`clf.vT.engine`, with `clf.vT.tokenizer` first when it was published
   two-hop: a version has one or two models, published.version_models) beside the serving ones. If one
   fails (a tampered engine, a model that does not load), unload what loaded, put the entry-point configs back to
   the serving version, and report the failure: nothing a client sees has changed.
2. Load the entry points (`clf_engine`, then `clf`) from their configs, now pinned to version T. Triton loads the
   new version of each ensemble and retires the old one only once it is ready: each request resolves to one
   entry-point version, whose steps are pinned to one version's models.
3. Wait until every request accepted before the switch has been answered (the gate counts them by epoch), then
   unload the old version's models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engineforge.errors import ServerError

from .gate import Gate
from .model_layout import (
    ENGINE_SUFFIX,
    engine_model_name,
    entry_model_names,
    parse_version_model,
    version_model_name,
)
from .published import CONFIG, read_manifest, version_models
from .versions import restore_entries

ENTRY_KIND = "ensemble"  # manifest kind of a published model's text entry point


class ModelControl:
    """Triton's model-control API with the control key, errors as ServerError carrying Triton's message."""

    def __init__(self, client: object, headers: dict[str, str]) -> None:
        self.client, self.headers = client, headers

    def __enter__(self) -> ModelControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()  # type: ignore[attr-defined]

    def load(self, name: str) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            self.client.load_model(name, headers=self.headers)  # type: ignore[attr-defined]
        except InferenceServerException as exc:
            raise ServerError(f"{name} failed to load: {one_line(exc.message() or str(exc))}") from exc

    def unload(self, name: str) -> None:
        from tritonclient.utils import InferenceServerException

        with contextlib.suppress(InferenceServerException):  # not loaded: nothing to do
            self.client.unload_model(name, headers=self.headers)  # type: ignore[attr-defined]

    def states(self) -> dict[str, dict[str, str]]:
        """{model: {version: state}} from the repository index (lifecycle states, readable with the key)."""
        index = self.client.get_model_repository_index(headers=self.headers)  # type: ignore[attr-defined]
        states: dict[str, dict[str, str]] = {}
        for model in index.models:
            states.setdefault(model.name, {})[model.version] = model.state
        return states


def one_line(message: str) -> str:
    """Triton's load errors carry the python traceback ("At: ..."): the reason alone, on one line."""
    return " ".join(message.split("\n\nAt:")[0].split())


@dataclass(frozen=True)
class SwitchResult:
    ok: bool
    message: str
    serving: int | None  # the version serving afterwards


def published_models(repo: Path) -> list[str]:
    """Names engineforge published into `repo` (their text entry points' directories)."""
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and (p / CONFIG).is_file()
                  and read_manifest(p).get("kind") == ENTRY_KIND)


def served_models(repo: Path, only: Sequence[str] = ()) -> list[str]:
    """What a server loads: both entry points of each published model (Triton loads their pinned version's models
    with them) and every other model in the repository; `only` restricts to those names (published or not)."""
    names = []
    published = set(published_models(repo))
    for path in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (path / CONFIG).is_file() or parse_version_model(path.name) is not None:
            continue  # versions' own models come with their entry points
        stem = path.name.removesuffix(ENGINE_SUFFIX)
        owner = stem if stem in published else path.name
        if not only or owner in only:
            names.append(path.name)
    return names


def must_be_ready(repo: Path, only: Sequence[str], serving: dict[str, int]) -> list[str]:
    """What must be READY for the server to answer every model it serves: for each published model it serves, the
    entry points and the two models of the version they run; and every other model it serves. (A model published
    while the server runs counts once it serves it: a first version that fails to load takes nothing down.)"""
    published = set(published_models(repo))
    others = [m for m in served_models(repo, only) if m.removesuffix(ENGINE_SUFFIX) not in published]
    own = {model: version_models(repo, model, version) or [version_model_name(model, version, "engine")]
           for model, version in serving.items()}  # a version's models on disk (one-hop: the engine alone)
    return others + [name for model in serving for name in (*entry_model_names(model), *own[model])]


def switch_version(control: ModelControl, repo: Path, model: str, current: int | None, target: int,
                   gate: Gate | None, drain_s: float, log: Callable[[str], None]) -> SwitchResult:
    """Serve `target` of `model` instead of `current` (None: not served yet); see the module's steps."""
    new = version_models(repo, model, target)
    old = version_models(repo, model, current) if current is not None else []
    if target != current:
        try:
            for name in new:
                control.load(name)
        except ServerError as exc:
            for name in new:
                control.unload(name)
            if current is not None:
                restore_entries(repo, model, current, change_id="")
            log(f"version {target} of {model!r} refused; version {current} keeps serving: {exc}")
            return SwitchResult(False, str(exc), current)
    try:
        for entry in reversed(entry_model_names(model)):  # ids first; the text entry point last
            control.load(entry)
    except ServerError as exc:  # the models loaded, yet an entry point did not: back to what served
        if current is None or current == target:  # nothing else to go back to (a reload keeps what served)
            return SwitchResult(False, str(exc), current)
        restore_entries(repo, model, current, change_id="")
        for entry in reversed(entry_model_names(model)):
            with contextlib.suppress(ServerError):
                control.load(entry)
        for name in new:
            control.unload(name)
        log(f"entry points of {model!r} refused version {target}; version {current} keeps serving: {exc}")
        return SwitchResult(False, str(exc), current)
    if current is not None and current != target:
        if gate is not None:
            drained = gate.wait_drained(drain_s, gate.new_epoch())
            if not drained:
                log(f"requests to version {current} of {model!r} still unanswered after {drain_s:g}s; unloading it")
        for name in old:
            control.unload(name)
    return SwitchResult(True, f"serving version {target} of {model!r} (was {current})", target)


def entry_points_of(model_name: str) -> tuple[str, ...]:
    """The entry points that run a version's model (`clf.v3.engine` -> clf, clf_engine), or () for other models."""
    parsed = parse_version_model(model_name)
    if parsed is None:
        return ()
    model, _, role = parsed
    return (model, engine_model_name(model)) if role == "engine" else (model,)
