"""The gate preloaded into tritonserver: its shared state has the same layout on both sides, the flags the supervisor
writes are what the C side reads, and the library is built once per source version."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from engineforge.serve import gate as gate_module
from engineforge.serve.gate import SOURCE, Gate, GateState, build_gate

needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")


@needs_cc
def test_state_layout_matches_the_c_struct(tmp_path: Path) -> None:
    fields = [name for name, _ in GateState._fields_]
    program = tmp_path / "layout.c"
    program.write_text(f'#include "{SOURCE}"\n#include <stddef.h>\n'
                       "TRITONSERVER_Error* TRITONSERVER_ErrorNew(int code, const char* message) { return NULL; }\n"
                       "int main(void) {\n"
                       f'  printf("%zu\\n", sizeof(gate_state));\n'
                       + "".join(f'  printf("%zu\\n", offsetof(gate_state, {name}));\n' for name in fields)
                       + "  return 0;\n}\n")
    binary = tmp_path / "layout"
    subprocess.run([shutil.which("cc") or "gcc", "-o", str(binary), str(program), "-ldl", "-lpthread"], check=True,
                   capture_output=True)
    size, *offsets = (int(x) for x in subprocess.run([str(binary)], check=True, capture_output=True,
                                                      text=True).stdout.split())
    assert size == ctypes.sizeof(GateState)
    assert offsets == [getattr(GateState, name).offset for name in fields]


def test_flags_and_names_land_in_the_shared_file(tmp_path: Path) -> None:
    gate = Gate(tmp_path / "state")
    try:
        assert not gate.ready  # nothing is served until the supervisor says so
        gate.set_ready(True)
        gate.set_not_ready({"clf", "clf.v3.engine"})
        gate.reap(1234)
        raw = GateState.from_buffer_copy((tmp_path / "state").read_bytes())  # what the C side maps
        assert raw.magic == gate_module.MAGIC and raw.server_ready == 1 and raw.draining == 0
        assert {s.value for s in raw.not_ready if s.value} == {b"clf", b"clf.v3.engine"}
        assert 1234 in list(raw.reap)
        assert gate.not_ready() == {"clf", "clf.v3.engine"}
        gate.set_not_ready(set())
        assert gate.not_ready() == set()
    finally:
        gate.close()


def test_epochs_count_what_was_accepted_before_a_switch(tmp_path: Path) -> None:
    gate = Gate(tmp_path / "state")
    try:
        gate.state.inflight[0] = 2  # two requests accepted in epoch 0, as the C side counts them
        previous = gate.new_epoch()
        assert previous == 0 and gate.state.epoch == 1
        assert not gate.wait_drained(0.05, previous)  # still two of epoch 0 unanswered
        gate.state.inflight[1] = 5  # new requests (epoch 1) do not hold the old epoch up
        gate.state.inflight[0] = 0
        assert gate.wait_drained(0.05, previous)
        assert not gate.wait_drained(0.05)  # a full drain waits for every epoch
    finally:
        gate.close()


@needs_cc
def test_the_library_is_built_once_per_source(tmp_path: Path) -> None:
    first = build_gate(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert build_gate(tmp_path) == first and first.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("*.tmp"))


def test_no_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engineforge.errors import ServerError

    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(gate_module.shutil, "which", lambda name: None)
    with pytest.raises(ServerError, match="needs a C compiler"):
        build_gate(tmp_path / "empty")
