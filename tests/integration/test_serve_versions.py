"""Version swaps under load against the real `engineforge serve`: publishing a new build makes it live and a
rollback brings the old one back, with zero failed requests from a client that never retries."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from engineforge.errors import RepositoryError
from engineforge.serve.engine_spec import EngineSpec
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import find_triton, free_port
from engineforge.serve.versions import rollback, serving_version
from tests.helpers.served_process import ServeProcess, TextLoad
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401

pytestmark = [pytest.mark.triton, pytest.mark.slow]

MODEL = "clf"


def _serving(client: grpcclient.InferenceServerClient, version: int, timeout_s: float = 40) -> float:
    """Wait until exactly `version` of every member is READY; returns how long it took."""
    started = time.monotonic()
    members = (MODEL, f"{MODEL}_engine", f"{MODEL}_tokenizer")
    other = 1 if version == 2 else 2
    while time.monotonic() < started + timeout_s:
        if all(client.is_model_ready(m, str(version)) for m in members) and not any(
                client.is_model_ready(m, str(other)) for m in members):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"version {version} not the only one serving after {timeout_s}s")


def test_publish_and_rollback_under_load_drop_nothing(tiny_bundle: Path, tmp_path: Path):  # noqa: F811
    find_triton()
    repo = tmp_path / "repo"
    publish_engine(tiny_bundle, repo, MODEL, max_batch_size=8)
    second = tmp_path / "bundle2"
    shutil.copytree(tiny_bundle, second)
    EngineSpec.from_dict(EngineSpec.load(second).to_dict() | {"build_id": "tiny-build-2"}).save(second)
    serve = ServeProcess(repo, tmp_path, free_port(), free_port()).start()
    client = grpcclient.InferenceServerClient(serve.url)
    try:
        phases = {}
        with TextLoad(serve.url, MODEL, threads=2, retry=False) as load:
            time.sleep(1.0)
            phases["publish"] = time.monotonic()
            published = publish_engine(second, repo, MODEL, max_batch_size=8)
            assert published.version == 2
            swap_s = _serving(client, 2)
            assert client.get_model_config(f"{MODEL}_engine").config.parameters["build_id"].string_value == \
                "tiny-build-2"
            time.sleep(1.0)
            phases["rollback"] = time.monotonic()
            result = rollback(repo, MODEL)
            assert (result["from"], result["to"]) == (2, 1) and serving_version(repo, MODEL)[0] == 1
            rollback_s = _serving(client, 1)
            time.sleep(1.0)
            phases["latest"] = time.monotonic()
            forward = rollback(repo, MODEL, "latest")
            assert forward["to"] == 2 and serving_version(repo, MODEL)[0] is None
            _serving(client, 2)
            time.sleep(0.5)
        print(f"swap live in {swap_s:.2f}s, rollback in {rollback_s:.2f}s; {len(load.outcomes)} requests, "
              f"{len(load.failures())} failed")
        assert len(load.outcomes) > 50
        failed = load.failures()
        assert not failed, (f"{len(failed)} failed between {failed[0].start:.2f} and {failed[-1].end:.2f}; phases "
                            f"{ {k: round(v, 2) for k, v in phases.items()} }: {failed[0].error}\n"
                            + "".join(line for line in serve.lines if "model" in line))
    finally:
        client.close()
        serve.stop()


def test_rollback_refuses_what_cannot_be_served(tiny_bundle: Path, tmp_path: Path):  # noqa: F811
    repo = tmp_path / "repo"
    publish_engine(tiny_bundle, repo, MODEL, max_batch_size=8)
    with pytest.raises(RepositoryError, match="serves version 1, the oldest on disk"):
        rollback(repo, MODEL)
    with pytest.raises(RepositoryError, match="has no published model 'nope'"):
        rollback(repo, "nope")
