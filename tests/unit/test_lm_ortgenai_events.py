"""How og.Engine's events become TokenEvents: flags and finish reasons to ours, the EOS token og leaves out,
events of requests the engine no longer follows (fake events; the real engine is in the integration tests)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import onnxruntime_genai as og
import pytest

from engineforge.errors import EngineLoadError
from engineforge.lm.engine import CANCELLED, EOS, ERROR, LENGTH, TokenEvent
from engineforge.lm.ortgenai_runtime import OrtGenAIEngine, _Turn

TOKEN, FINISHED, FAILED = (int(og.EngineEventFlags.TOKEN), int(og.EngineEventFlags.TURN_FINISHED),
                           int(og.EngineEventFlags.FAILED))


class FakeRequest:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _engine(eos: tuple[int, ...] = (0,)) -> tuple[Any, FakeRequest]:
    engine: Any = object.__new__(OrtGenAIEngine)  # no model: only the event mapping is exercised
    engine._og, engine.eos_token_ids = og, frozenset(eos)
    request = FakeRequest()
    engine._turns, engine._by_request = {7: _Turn(request, 1)}, {id(request): 7}
    return engine, request


def _event(request: FakeRequest, flags: int, token: int | None, reason: str = "NONE") -> SimpleNamespace:
    return SimpleNamespace(request=request, flags=flags, token=token, finish_reason=getattr(og.FinishReason, reason))


def test_a_token_keeps_the_sequence_open() -> None:
    engine, request = _engine()
    assert engine._map_event(_event(request, TOKEN, 42)) == TokenEvent(7, 42, None)
    assert 7 in engine._turns and not request.closed


@pytest.mark.parametrize(("flags", "token", "reason", "expected"), [
    (TOKEN | FINISHED, 42, "MAX_GENERATED_TOKENS", TokenEvent(7, 42, LENGTH)),
    (FINISHED, None, "MAX_SESSION_TOKENS", TokenEvent(7, None, LENGTH)),
    (FINISHED, None, "CANCELLED", TokenEvent(7, None, CANCELLED)),
    (FINISHED, None, "EOS", TokenEvent(7, 0, EOS)),  # og leaves the EOS token out; the torch engine sends it
    (FAILED | FINISHED, None, "FAILED", TokenEvent(7, None, ERROR)),
    (FAILED, None, "NONE", TokenEvent(7, None, ERROR)),
])
def test_a_finished_turn_ends_and_frees_its_request(flags: int, token: int | None, reason: str,
                                                    expected: TokenEvent) -> None:
    engine, request = _engine()
    assert engine._map_event(_event(request, flags, token, reason)) == expected
    assert request.closed and not engine._turns and not engine._by_request


def test_eos_token_is_unknown_when_several_could_have_ended_it() -> None:
    engine, request = _engine(eos=(0, 3))
    assert engine._map_event(_event(request, FINISHED, None, "EOS")) == TokenEvent(7, None, EOS)


def test_events_of_unknown_requests_are_dropped() -> None:
    engine, _ = _engine()
    assert engine._map_event(_event(FakeRequest(), TOKEN, 5)) is None
    assert 7 in engine._turns


def test_a_folder_without_a_valid_genai_config_is_an_engine_load_error(tmp_path: Path) -> None:
    from engineforge.lm.bundle import LMEngineSpec
    from engineforge.lm.runtimes import open_lm_engine

    spec = LMEngineSpec("onnxruntime-genai", "int4", "llama", 256, (0,), group_size=32)
    (tmp_path / "model").mkdir()
    with pytest.raises(EngineLoadError, match=r"genai_config\.json is missing"):
        open_lm_engine(spec, tmp_path / "model")
    (tmp_path / "model" / "genai_config.json").write_text('{"model": {}}')
    with pytest.raises(EngineLoadError, match="not a valid genai config"):
        open_lm_engine(spec, tmp_path / "model")
