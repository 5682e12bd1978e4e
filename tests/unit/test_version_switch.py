"""The version switch's order of operations against a recording stand-in for Triton's model control (pure logic:
the real server is exercised in tests/integration/test_serve_versions.py): the new version's models load before
any entry point moves, a refusal leaves the serving version untouched (on disk too), the old version's models go
only after the switch, and the models a server loads at start are the entry points."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engineforge.engines.engine_spec import EngineSpec
from engineforge.errors import RepositoryError, ServerError
from engineforge.serve.gate import Gate
from engineforge.serve.published import pinned, verify_version
from engineforge.serve.repository import publish_engine
from engineforge.serve.version_switch import (
    must_be_ready,
    published_models,
    served_models,
    switch_version,
)
from engineforge.serve.versions import serving_version
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401


class Control:
    """Records load/unload calls; names in `refuse` fail to load like Triton would."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.refuse = refuse

    def load(self, name: str) -> None:
        self.calls.append(("load", name))
        if name in self.refuse:
            raise ServerError(f"{name} failed to load: refused")

    def unload(self, name: str) -> None:
        self.calls.append(("unload", name))


def two_versions(bundle: Path, tmp_path: Path, first: str, second: str) -> Path:
    """A repository whose entry points on disk ask for version 2; each version published with the text layout
    given (a two-hop version has two models, a one-hop version one)."""
    repo = tmp_path / "repo"
    publish_engine(bundle, repo, "clf", text_path=first)
    again = tmp_path / "second"
    shutil.copytree(bundle, again)
    EngineSpec.from_dict(EngineSpec.load(again).to_dict() | {"build_id": "tiny-build-2"}).save(again)
    publish_engine(again, repo, "clf", text_path=second)
    return repo


@pytest.fixture
def repo(tiny_bundle: Path, tmp_path: Path) -> Path:  # noqa: F811
    return two_versions(tiny_bundle, tmp_path, "two-hop", "two-hop")


def test_the_new_version_loads_first_and_the_old_goes_last(repo: Path, tmp_path: Path) -> None:
    control, gate = Control(), Gate(tmp_path / "gate")
    try:
        result = switch_version(control, repo, "clf", 1, 2, gate, 1.0, lambda _: None)
        assert gate.state.epoch == 1  # the old version waited for what was accepted before the switch
    finally:
        gate.close()
    assert result.ok and result.serving == 2
    assert control.calls == [("load", "clf.v2.tokenizer"), ("load", "clf.v2.engine"), ("load", "clf_engine"),
                             ("load", "clf"), ("unload", "clf.v1.tokenizer"), ("unload", "clf.v1.engine")]


@pytest.mark.parametrize("refused", ["clf.v2.engine", "clf.v2.tokenizer"])
def test_a_version_model_that_fails_leaves_the_serving_version_alone(repo: Path, refused: str) -> None:
    logged: list[str] = []
    control = Control(refuse=(refused,))
    result = switch_version(control, repo, "clf", 1, 2, None, 1.0, logged.append)
    assert not result.ok and result.serving == 1 and refused in result.message
    assert not [c for c in control.calls if c[1] in ("clf", "clf_engine")], "an entry point moved"
    assert ("unload", "clf.v2.engine") in control.calls and ("unload", "clf.v2.tokenizer") in control.calls
    assert not [c for c in control.calls if c == ("unload", "clf.v1.engine")]
    assert serving_version(repo, "clf")[0] == 1  # the configs on disk went back to the version still serving
    assert pinned(repo, "clf") == (1, "")  # no change id: the supervisor must not report it as the new change
    assert logged and "keeps serving" in logged[0]


def test_an_entry_point_that_fails_goes_back_to_the_serving_version(repo: Path) -> None:
    control = Control(refuse=("clf",))
    result = switch_version(control, repo, "clf", 1, 2, None, 1.0, lambda _: None)
    assert not result.ok and result.serving == 1
    assert serving_version(repo, "clf")[0] == 1
    loads_after_refusal = [c for c in control.calls[control.calls.index(("load", "clf")) + 1:] if c[0] == "load"]
    assert ("load", "clf_engine") in loads_after_refusal  # back on version 1
    assert ("unload", "clf.v2.engine") in control.calls and ("unload", "clf.v1.engine") not in control.calls


def test_the_same_version_only_reloads_its_entry_points(repo: Path) -> None:
    control = Control()
    assert switch_version(control, repo, "clf", 2, 2, None, 1.0, lambda _: None).ok
    assert control.calls == [("load", "clf_engine"), ("load", "clf")]


def test_a_server_loads_the_entry_points_and_other_models(repo: Path) -> None:
    (repo / "foreign" / "1").mkdir(parents=True)
    (repo / "foreign" / "config.pbtxt").write_text('name: "foreign"\nbackend: "python"\n')
    assert published_models(repo) == ["clf"]
    assert served_models(repo) == ["clf", "clf_engine", "foreign"]  # never every version's own models
    assert served_models(repo, only=("clf",)) == ["clf", "clf_engine"]
    assert served_models(repo, only=("foreign",)) == ["foreign"]
    # readiness needs what is served: a published model's entry points and its serving version's models
    assert must_be_ready(repo, (), {"clf": 2}) == ["foreign", "clf", "clf_engine", "clf.v2.tokenizer",
                                                   "clf.v2.engine"]
    assert must_be_ready(repo, (), {}) == ["foreign"]  # published, but its first version never loaded


@pytest.mark.parametrize(("first", "second"), [("two-hop", "one-hop"), ("one-hop", "two-hop"), ("one-hop", "one-hop")])
def test_switching_between_text_layouts_loads_and_unloads_each_versions_own_models(
        tiny_bundle: Path, tmp_path: Path, first: str, second: str) -> None:  # noqa: F811
    repo = two_versions(tiny_bundle, tmp_path, first, second)
    models = {"one-hop": ["engine"], "two-hop": ["tokenizer", "engine"]}
    control = Control()
    assert switch_version(control, repo, "clf", 1, 2, None, 1.0, lambda _: None).ok
    assert control.calls == [*(("load", f"clf.v2.{role}") for role in models[second]), ("load", "clf_engine"),
                             ("load", "clf"), *(("unload", f"clf.v1.{role}") for role in models[first])]
    assert must_be_ready(repo, (), {"clf": 2}) == ["clf", "clf_engine", *(f"clf.v2.{r}" for r in models[second])]
    assert serving_version(repo, "clf") == (2, [1, 2])  # both layouts are versions a rollback may go to
    for version in (1, 2):
        verify_version(repo, "clf", version)


def test_a_changed_tokenizer_beside_a_one_hop_engine_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    repo = two_versions(tiny_bundle, tmp_path, "one-hop", "one-hop")
    vocab = repo / "clf.v1.engine" / "1" / "tokenizer" / "vocab.txt"
    vocab.write_text(vocab.read_text() + "extra\n")
    with pytest.raises(RepositoryError, match=r"tokenizer: sha256 .* differs from the published"):
        verify_version(repo, "clf", 1)
