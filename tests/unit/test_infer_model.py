"""`engineforge infer` without --model: the only model the server serves, found without the control key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engineforge.errors import UsageError
from engineforge.grpc_errors import PermissionDeniedError
from engineforge.serve.infer_model import index_models, pick_model
from engineforge.serve.serving_status import STATUS_FILE


class FakeClient:
    """What pick_model asks a server: readiness per model (public) and the index (restricted unless `index`)."""

    url = "127.0.0.1:8001"

    def __init__(self, ready: set[str], index: list[str] | None = None) -> None:
        self.ready, self.index = ready, index

    def model_ready(self, model: str) -> bool:
        return model in self.ready

    def ready_models(self) -> list[str]:
        if self.index is None:
            raise PermissionDeniedError("the repository index needs the control key")
        return self.index


def publish(repo: Path, *names: str) -> Path:
    """Entry-point directories as a publish leaves them (config + manifest); versions' own models beside them."""
    for name in names:
        for model in (name, f"{name}_engine", f"{name}.v1.engine"):
            (repo / model).mkdir(parents=True)
            (repo / model / "config.pbtxt").write_text("")
        (repo / name / "versions.json").write_text(json.dumps({"kind": "ensemble", "versions": {}}))
    return repo


def test_the_only_served_model_is_picked_and_named(tmp_path, capsys):
    repo = publish(tmp_path / "repo", "intent", "ner")
    assert pick_model(FakeClient({"intent", "intent_engine"}), repo) == "intent"
    assert ("[engineforge] model 'intent': the only one served at 127.0.0.1:8001 (--model picks another)"
            in capsys.readouterr().err)


def test_several_served_models_are_listed(tmp_path):
    repo = publish(tmp_path / "repo", "intent", "ner")
    with pytest.raises(UsageError, match=r"2 models are served at 127\.0\.0\.1:8001: intent, ner; pick one with "
                                         r"--model NAME"):
        pick_model(FakeClient({"intent", "ner"}), repo)


def test_the_running_servers_status_file_names_models(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / STATUS_FILE).write_text(json.dumps({"pid": os.getpid(), "models": {"clf": {"version": 2}}}))
    assert pick_model(FakeClient({"clf"}), repo) == "clf"


def test_nothing_found_says_how_to_name_a_model(tmp_path):
    repo = publish(tmp_path / "repo", "intent")
    with pytest.raises(UsageError, match=r"none of the models in .*repo \(intent\) is ready at 127\.0\.0\.1:8001; "
                                         r"pass --model NAME"):
        pick_model(FakeClient(set()), repo)
    with pytest.raises(UsageError, match=r"cannot be listed here: .*missing holds no published model and the server's "
                                         r"model index needs the control key; pass --model NAME"):
        pick_model(FakeClient(set()), tmp_path / "missing")


def test_an_open_index_is_read_when_the_repository_names_nothing(tmp_path):
    index = ["a", "a_engine", "a.v1.engine", "a.v1.tokenizer", "b_engine"]
    assert index_models(FakeClient(set(), index)) == ["a", "b_engine"]  # b_engine has no text entry point
    assert pick_model(FakeClient(set(), ["a", "a_engine", "a.v1.engine"]), tmp_path / "missing") == "a"
