"""Faults under load against the real `engineforge serve`: a killed engine stub, a killed tokenizer stub, a killed
tritonserver, a killed supervisor. Each time the service answers again within 30 s, no readiness sample (model or
server) says READY while requests fail, every request ends (success or a typed error) before its deadline, a
retrying client loses nothing, and nothing is left behind: no shared-memory region, zombie, orphan stub or
temporary directory outlives what it belonged to."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from engineforge.serve import leftovers
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import find_triton, free_port
from engineforge.serve.stubs import find_stubs
from tests.helpers.served_process import ReadinessSampler, ServeProcess, TextLoad
from tests.helpers.tiny_engine import tiny_bundle  # noqa: F401

pytestmark = [pytest.mark.triton, pytest.mark.slow]

MODEL = "clf"


@pytest.fixture
def serve(tiny_bundle: Path, tmp_path: Path, request: pytest.FixtureRequest):  # noqa: F811
    find_triton()
    repo = tmp_path / "repo"
    # a test about the tokenizer model's stub needs the two-hop layout (one-hop versions have no tokenizer model)
    params = getattr(request.node, "callspec", None)
    two_hop = params is not None and params.params.get("role") == "tokenizer"
    publish_engine(tiny_bundle, repo, MODEL, max_batch_size=8, text_path="two-hop" if two_hop else "one-hop")
    process = ServeProcess(repo, tmp_path, free_port(), free_port()).start()
    yield process
    process.stop()


def _recovery(load: TextLoad, since: float) -> float:
    """Seconds from `since` to the first success that started after the first failure."""
    failures = [o for o in load.outcomes if not o.ok and o.start >= since]
    first = failures[0].start if failures else since
    successes = [o.end for o in load.outcomes if o.ok and o.start > first]
    return (min(successes) - since) if successes else float("inf")


def _ready_while_failing(load: TextLoad, ready: ReadinessSampler, since: float) -> list[tuple[float, bool]]:
    """Readiness samples that said READY (model and server) while the server was failing requests: taken between
    the end of the first request it failed and the end of the last. Connection failures are left out: nothing
    answers then, and a client's reconnect backoff can outlast the server's own restart."""
    answered = [o for o in load.outcomes if not o.ok and o.start >= since and "Unavailable" not in o.error]
    if not answered:
        return []
    first, last = min(o.end for o in answered), max(o.end for o in answered)
    return [(t, up) for t, up in ready.samples if first < t < last and up]


def _check_every_request_ended(load: TextLoad) -> None:
    assert load.outcomes and all(o.end - o.start < load.timeout_s + 2 for o in load.outcomes), "a request hung"
    for outcome in load.failures():  # typed engineforge errors with a message, never a bare exception
        assert outcome.error.split(":")[0] in {"ServerError", "ServerUnavailableError", "ModelNotReadyError"}, outcome


def _wait_for_line(serve: ServeProcess, text: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(text in line for line in serve.lines):
        assert time.monotonic() < deadline, f"the supervisor never said {text!r}:\n" + "".join(serve.lines[-10:])
        time.sleep(0.1)


def _regions(serve: ServeProcess) -> set[str]:
    return {p.name for p in leftovers.SHM_DIR.glob(f"{leftovers.SHM_PREFIX}{serve.process.pid}_*")}


def _mappers() -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for entry in (e for e in os.listdir("/proc") if e.isdigit()):
        try:
            for line in Path(f"/proc/{entry}/maps").read_text().splitlines():
                if "/dev/shm/" in line:
                    found.setdefault(line.rsplit("/dev/shm/", 1)[1].strip(), set()).add(int(entry))
        except OSError:
            continue
    return found


def _zombies(parent: int) -> list[int]:
    found = []
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            if Path(f"/proc/{child}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z":
                found.append(int(child))
        except OSError:
            continue
    return found


def _settle(check, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.parametrize("role", ["engine", "tokenizer"])
def test_a_killed_stub_is_repaired_readiness_stays_honest_and_nothing_is_left(serve: ServeProcess, role: str):
    member = f"{MODEL}.v1.{role}"
    regions_before = _regions(serve)
    with ReadinessSampler(serve.url, MODEL, every_s=0.005) as ready, TextLoad(serve.url, MODEL, rate=50) as load, \
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
    lies = _ready_while_failing(load, ready, killed)
    print(f"{member} stub killed: answering again after {recovery:.2f}s; {len(load.failures())} of "
          f"{len(load.outcomes)} requests failed at 50 req/s without retries, {len(retrying.failures())} of "
          f"{len(retrying.outcomes)} with retries; {len(lies)} readiness samples said READY while requests failed")
    assert recovery < 30
    assert not lies, f"READY while requests failed: {lies[:5]}"
    assert any(not up for t, up in ready.samples if t >= killed), "readiness never turned NOT READY"
    _check_every_request_ended(load)
    assert not retrying.failures(), retrying.failures()[:3]
    _wait_for_line(serve, f"model {member!r} reloaded")
    triton = serve.triton_pid()
    assert _settle(lambda: not _zombies(triton)), f"dead stubs left as zombies: {_zombies(triton)}"
    assert _settle(lambda: len(_regions(serve)) <= len(regions_before)), \
        f"shared memory left: {sorted(regions_before)} before, now {sorted(_regions(serve))}; mapped: " \
        f"{ {r: sorted(p) for r, p in _mappers().items() if r in _regions(serve)} }"


def test_a_killed_server_is_restarted_and_its_leftovers_removed(serve: ServeProcess):
    with ReadinessSampler(serve.url, MODEL) as ready, TextLoad(serve.url, MODEL, rate=50) as load, \
            TextLoad(serve.url, MODEL, threads=1, timeout_s=40, retry=True) as retrying:
        time.sleep(1.5)
        stubs = find_stubs(serve.triton_pid())
        regions = _regions(serve)
        killed = time.monotonic()
        os.kill(serve.triton_pid(), signal.SIGKILL)
        while time.monotonic() < killed + 30 and _recovery(load, killed) == float("inf"):
            time.sleep(0.2)
        time.sleep(1.0)
    recovery = _recovery(load, killed)
    print(f"tritonserver killed: answering again after {recovery:.2f}s; {len(load.failures())} of "
          f"{len(load.outcomes)} requests failed without retries, {len(retrying.failures())} with retries")
    assert recovery < 30
    assert not _ready_while_failing(load, ready, killed)
    _check_every_request_ended(load)
    assert not retrying.failures(), retrying.failures()[:3]
    _wait_for_line(serve, "tritonserver restarted and ready")
    # Triton 2.51's stubs do not notice their server's death: the supervisor must end them, or they leak
    assert stubs and not [pid for pid in stubs if Path(f"/proc/{pid}").exists()], "stubs of the killed server leak"
    assert regions and _settle(lambda: not regions & _regions(serve)), \
        f"the killed server's shared memory was left in /dev/shm: {sorted(regions & _regions(serve))}"


def test_the_server_dies_with_its_supervisor_and_the_next_start_cleans_up(serve: ServeProcess, tmp_path: Path):
    triton = serve.triton_pid()
    stubs = find_stubs(triton)
    regions = _regions(serve)
    runtime_dirs = {p for p in Path("/tmp").glob(f"{leftovers.RUNTIME_PREFIX}{serve.process.pid}-*")}
    assert stubs and regions and runtime_dirs
    os.kill(serve.process.pid, signal.SIGKILL)
    serve.process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{triton}").exists():
        time.sleep(0.1)
    alive = Path(f"/proc/{triton}").exists() and b"Z" not in Path(f"/proc/{triton}/stat").read_bytes().split()[2:3]
    assert not alive, "tritonserver outlived its killed supervisor"
    # The next start removes what the killed supervisor's server left: stubs, regions, its runtime directory.
    again = ServeProcess(serve.repo, tmp_path / "again", free_port(), free_port())
    again.workdir.mkdir()
    again.start()
    try:
        assert not [pid for pid in stubs if Path(f"/proc/{pid}").exists()], "orphan stubs survived the next start"
        assert not [r for r in regions if (leftovers.SHM_DIR / r).exists()], "regions survived the next start"
        assert not [d for d in runtime_dirs if d.exists()], "the runtime directory survived the next start"
    finally:
        again.stop()
