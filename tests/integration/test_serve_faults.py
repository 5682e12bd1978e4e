"""Faults under load against the real `engineforge serve`: a killed engine stub, a killed tokenizer stub, a killed
tritonserver, a killed supervisor. Each time the service answers again within 30 s, readiness does not say READY
while requests fail, every request ends (success or a typed error) before its deadline, and a retrying client
loses nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from engineforge.serve.repository import publish_engine
from engineforge.serve.server import find_triton, free_port
from engineforge.serve.supervisor import find_stubs
from tests.helpers.served_process import ReadinessSampler, ServeProcess, TextLoad
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401

pytestmark = [pytest.mark.triton, pytest.mark.slow]

MODEL = "clf"
DETECTION_GRACE_S = 1.0  # from a stub's death to NOT READY: pidfd wake-up + one unload call (measured ~10 ms)


@pytest.fixture
def serve(tiny_bundle: Path, tmp_path: Path):  # noqa: F811
    find_triton()
    repo = tmp_path / "repo"
    publish_engine(tiny_bundle, repo, MODEL, max_batch_size=8)
    process = ServeProcess(repo, tmp_path, free_port(), free_port()).start()
    yield process
    process.stop()


def _recovery(load: TextLoad, since: float) -> float:
    """Seconds from `since` to the first success that started after the first failure."""
    failures = [o for o in load.outcomes if not o.ok and o.start >= since]
    first = failures[0].start if failures else since
    successes = [o.end for o in load.outcomes if o.ok and o.start > first]
    return (min(successes) - since) if successes else float("inf")


def _check_honest(load: TextLoad, ready: ReadinessSampler, since: float) -> None:
    """No request that the server answered with a failure lies between two READY samples (past the detection
    grace). Connection failures are left out: nothing answers then, and a client's reconnect backoff can outlast
    the server's own restart."""
    answered = [o for o in load.outcomes if not o.ok and o.start >= since and "Unavailable" not in o.error]
    if not answered:
        return
    grace_end = min(o.end for o in answered) + DETECTION_GRACE_S
    samples = ready.samples
    lies = []
    for failure in (o for o in answered if o.start > grace_end):
        before = [r for t, r in samples if t <= failure.start][-1:]
        after = [r for t, r in samples if t >= failure.end][:1]
        if before == [True] and after == [True]:
            lies.append(failure)
    assert not lies, f"{len(lies)} failed requests between READY samples, e.g. {lies[0]}"
    assert any(not r for t, r in samples if t >= since), "readiness never turned NOT READY"


def _check_every_request_ended(load: TextLoad) -> None:
    assert load.outcomes and all(o.end - o.start < load.timeout_s + 2 for o in load.outcomes), "a request hung"
    for outcome in load.failures():  # typed engineforge errors with a message, never a bare exception
        assert outcome.error.split(":")[0] in {"ServerError", "ServerUnavailableError", "ModelNotReadyError"}, outcome


def _wait_for_line(serve: ServeProcess, text: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(text in line for line in serve.lines):
        assert time.monotonic() < deadline, f"the supervisor never said {text!r}:\n" + "".join(serve.lines[-10:])
        time.sleep(0.1)


@pytest.mark.parametrize("member", [f"{MODEL}_engine", f"{MODEL}_tokenizer"])
def test_a_killed_stub_is_repaired_and_readiness_stays_honest(serve: ServeProcess, member: str):
    with ReadinessSampler(serve.url, MODEL) as ready, TextLoad(serve.url, MODEL) as load, \
            TextLoad(serve.url, MODEL, threads=1, timeout_s=30, retry=True) as retrying:
        time.sleep(1.5)
        stub = next(pid for pid, model in find_stubs(serve.triton_pid()).items() if model == member)
        killed = time.monotonic()
        os.kill(stub, signal.SIGKILL)
        deadline = killed + 30
        while time.monotonic() < deadline and _recovery(load, killed) == float("inf"):
            time.sleep(0.2)
        time.sleep(1.0)
    recovery = _recovery(load, killed)
    print(f"{member} stub killed: answering again after {recovery:.2f}s; {len(load.failures())} of "
          f"{len(load.outcomes)} requests failed without retries, {len(retrying.failures())} of "
          f"{len(retrying.outcomes)} with retries")
    assert recovery < 30
    _check_honest(load, ready, killed)
    _check_every_request_ended(load)
    assert not retrying.failures(), retrying.failures()[:3]
    _wait_for_line(serve, f"model {member!r} reloaded")


def test_a_killed_server_is_restarted(serve: ServeProcess):
    with ReadinessSampler(serve.url, MODEL) as ready, TextLoad(serve.url, MODEL) as load, \
            TextLoad(serve.url, MODEL, threads=1, timeout_s=40, retry=True) as retrying:
        time.sleep(1.5)
        stubs = find_stubs(serve.triton_pid())
        killed = time.monotonic()
        os.kill(serve.triton_pid(), signal.SIGKILL)
        while time.monotonic() < killed + 30 and _recovery(load, killed) == float("inf"):
            time.sleep(0.2)
        time.sleep(1.0)
    recovery = _recovery(load, killed)
    print(f"tritonserver killed: answering again after {recovery:.2f}s; {len(load.failures())} of "
          f"{len(load.outcomes)} requests failed without retries, {len(retrying.failures())} with retries")
    assert recovery < 30
    _check_honest(load, ready, killed)
    _check_every_request_ended(load)
    assert not retrying.failures(), retrying.failures()[:3]
    _wait_for_line(serve, "tritonserver restarted and ready")
    # Triton 2.51's stubs do not notice their server's death: the supervisor must end them, or they leak
    assert stubs and not [pid for pid in stubs if Path(f"/proc/{pid}").exists()], "stubs of the killed server leak"


def test_the_server_dies_with_its_supervisor(serve: ServeProcess):
    triton = serve.triton_pid()
    os.kill(serve.process.pid, signal.SIGKILL)
    serve.process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{triton}").exists():
        time.sleep(0.1)
    alive = Path(f"/proc/{triton}").exists() and b"Z" not in Path(f"/proc/{triton}/stat").read_bytes().split()[2:3]
    assert not alive, "tritonserver outlived its killed supervisor"
