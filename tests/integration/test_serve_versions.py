"""Version swaps under load against the real `engineforge serve`: never a wrong answer, never a failed request.

Version 2 is version 1 with some word ids swapped in its tokenizer and the matching embedding rows swapped in its
engine: each version alone answers exactly alike, but the tokenizer of one feeding the engine of the other answers
differently, so any request served by a mix of versions shows up as a wrong answer. Publishing it, rolling back and
forward again under 50 requests/s must give 0 wrong answers and 0 failed requests, every answer must say which
version produced it, and the server's own readiness must never drop while every model serves. A version whose files
were changed after publishing, or which fails to load, is refused: the command fails with the reason, and the
version serving keeps serving.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engineforge.serve.repository import publish_engine
from engineforge.serve.server import find_triton, free_port
from engineforge.serve.versions import rollback, serving_version
from tests.helpers.in_process import probabilities_one_by_one
from tests.helpers.permuted_vocab import permute_vocabulary
from tests.helpers.served_process import Outcome, ReadinessSampler, ServeProcess, TextLoad
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401

pytestmark = [pytest.mark.triton, pytest.mark.slow]

MODEL = "clf"
TEXTS = ("where is my parcel?", "I want my money back", "my order never arrived", "where is my money",
         "is my order on its way back")
SWAPPED = ("where", "my", "order", "money", "back", "is")
OUTPUTS = ("LABEL", "PROBABILITIES", "VERSION")


@pytest.fixture(scope="module")
def bundles(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:  # noqa: F811
    find_triton()
    permuted = tmp_path_factory.mktemp("permuted") / "bundle"
    permute_vocabulary(tiny_bundle, permuted, SWAPPED, build_id="tiny-permuted")
    expected = probabilities_one_by_one(tiny_bundle, list(TEXTS))
    np.testing.assert_allclose(probabilities_one_by_one(permuted, list(TEXTS)), expected, atol=1e-6)
    return tiny_bundle, permuted, dict(zip(TEXTS, expected, strict=True))


def _wrong(outcomes: list[Outcome], expected: dict) -> list[Outcome]:
    return [o for o in outcomes if o.ok and not np.allclose(o.answer["PROBABILITIES"][0], expected[o.text],
                                                             atol=1e-4)]


def _versions(outcomes: list[Outcome], after: float, before: float = float("inf")) -> set[str]:
    return {o.answer["VERSION"][0, 0].decode() for o in outcomes if o.ok and after <= o.start and o.end <= before}


def _serve(repo: Path, tmp_path: Path) -> ServeProcess:
    return ServeProcess(repo, tmp_path, free_port(), free_port()).start()


# The default one-hop layout on both sides, and a swap from the older two-hop layout (two models per version) to a
# one-hop version (one model) and back: the switch loads and unloads each version's own models.
@pytest.mark.parametrize("first_layout", ["one-hop", "two-hop"])
def test_publish_and_rollbacks_of_a_permuted_vocabulary_never_mix_versions(bundles, tmp_path: Path,
                                                                           first_layout: str):
    first, permuted, expected = bundles
    repo = tmp_path / "repo"
    publish_engine(first, repo, MODEL, max_batch_size=8, text_path=first_layout)
    serve = _serve(repo, tmp_path)
    marks = {}
    try:
        with ReadinessSampler(serve.url, MODEL, http_url=f"127.0.0.1:{serve.http_port}") as ready, \
                TextLoad(serve.url, MODEL, rate=50, texts=TEXTS, outputs=OUTPUTS) as load:
            time.sleep(1.0)
            marks["publish"] = time.monotonic()
            published = publish_engine(permuted, repo, MODEL, max_batch_size=8)  # waits for the server's verdict
            marks["published"] = time.monotonic()
            assert published.version == 2 and published.served and "serving version 2" in published.served
            time.sleep(1.5)
            marks["rollback"] = time.monotonic()
            assert rollback(repo, MODEL)["served"] is not None
            marks["rolled_back"] = time.monotonic()
            time.sleep(1.5)
            marks["forward"] = time.monotonic()
            assert rollback(repo, MODEL, "latest")["to"] == 2
            marks["forwarded"] = time.monotonic()
            time.sleep(1.0)
    finally:
        serve.stop()
    outcomes, failed, wrong = load.outcomes, load.failures(), _wrong(load.outcomes, expected)
    print(f"{len(outcomes)} requests at 50/s over a publish ({marks['published'] - marks['publish']:.1f}s), a "
          f"rollback ({marks['rolled_back'] - marks['rollback']:.1f}s) and a roll-forward "
          f"({marks['forwarded'] - marks['forward']:.1f}s): {len(wrong)} wrong answers, {len(failed)} failed")
    assert len(outcomes) > 200
    assert not failed, failed[:3]
    assert not wrong, [(o.text, o.answer) for o in wrong[:3]]
    # every answer names its version: before the publish 1, once a command returned the version it asked for
    assert _versions(outcomes, 0, marks["publish"]) == {"1"}
    assert _versions(outcomes, marks["published"], marks["rollback"]) == {"2"}
    assert _versions(outcomes, marks["rolled_back"], marks["forward"]) == {"1"}
    assert _versions(outcomes, marks["forwarded"]) == {"2"}
    # a load balancer never saw this server NOT READY (gRPC ServerReady, HTTP /v2/health/ready) while a new version
    # loaded beside the serving one
    assert ready.server_samples and all(up for _, up in ready.server_samples), "server readiness dropped in a swap"
    assert all(up for _, up in ready.samples), "the model said NOT READY during a swap"


def _rollback_cli(repo: Path, to: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "import sys; from engineforge.cli import main; sys.exit(main())",
                           "rollback", "--repo", str(repo), "--model", MODEL, "--to", str(to)],
                          capture_output=True, text=True, timeout=300)


def test_a_refused_version_fails_the_command_and_the_serving_one_keeps_serving(bundles, tmp_path: Path):
    first, permuted, expected = bundles
    repo = tmp_path / "repo"
    publish_engine(first, repo, MODEL, max_batch_size=8)
    publish_engine(permuted, repo, MODEL, max_batch_size=8)
    engine = repo / "clf.v1.engine" / "1" / "model.onnx"
    original = engine.read_bytes()
    engine.write_bytes(original[:-100] + bytes([original[-100] ^ 0xFF]) + original[-99:])  # one flipped byte
    serve = _serve(repo, tmp_path)
    try:
        with ReadinessSampler(serve.url, MODEL, http_url=f"127.0.0.1:{serve.http_port}") as ready, \
                TextLoad(serve.url, MODEL, rate=50, texts=TEXTS, outputs=OUTPUTS) as load:
            time.sleep(1.0)
            tampered = _rollback_cli(repo, 1)
            # A damage the hashes cannot see (engine.json's labels now disagree with the published config): the
            # server itself refuses to load the version.
            engine.write_bytes(original)
            spec_file = repo / "clf.v1.engine" / "1" / "engine.json"
            spec_text = spec_file.read_text()
            spec_file.write_text(spec_text.replace('"order_status"', '"renamed"'))
            unloadable = _rollback_cli(repo, 1)
            time.sleep(1.0)
            still = serving_version(repo, MODEL)[0]
            spec_file.write_text(spec_text)  # repaired: now the rollback goes through
            repaired = _rollback_cli(repo, 1)
            time.sleep(1.0)
    finally:
        serve.stop()
    assert tampered.returncode == 1, tampered
    line = tampered.stderr.strip()
    assert "\n" not in line and str(engine) in line, line
    hashes = re.findall(r"\b[0-9a-f]{64}\b", line)
    assert len(set(hashes)) == 2, line  # the file's hash and the published one, both in full
    (error,) = [line for line in unloadable.stderr.splitlines() if line.startswith("engineforge rollback: error:")]
    assert unloadable.returncode == 1 and "refused" in error and "keeps serving version 2" in error, error
    assert "clf.v1.engine" in error and "labels" in error  # the server's own reason
    assert still == 2  # the server put the entry points back to the version it kept serving
    assert repaired.returncode == 0, repaired.stderr
    outcomes = load.outcomes
    print(f"{len(outcomes)} requests over two refused rollbacks and one repaired: {len(_wrong(outcomes, expected))} "
          f"wrong, {len(load.failures())} failed; versions answering {sorted(_versions(outcomes, 0))}")
    assert not load.failures(), load.failures()[:3]
    assert not _wrong(outcomes, expected)
    assert _versions(outcomes, 0) == {"1", "2"}  # 2 throughout the refusals, 1 once the repaired rollback ran
    assert all(up for _, up in ready.server_samples), "ServerReady dropped after a refused version"
