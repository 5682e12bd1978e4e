"""The generation client's pure parts: the request tensors it sends, how a streamed response becomes a piece, how
pieces add up (time to first token, decode speed), and how stream errors are typed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from engineforge.errors import InferenceRequestError, ServerError
from engineforge.serve import lm_client as lc
from engineforge.serve.lm_requests import ENGINE_FAILED, piece_arrays


def test_generation_inputs_send_only_what_is_given_with_the_served_dtypes() -> None:
    assert set(lc.generation_inputs("hi")) == {"TEXT"}
    inputs = lc.generation_inputs("hi", max_tokens=5, temperature=0.5, top_p=0.9, top_k=3, seed=1, stop="\n")
    assert {n: a.dtype.name for n, a in inputs.items()} == {
        "TEXT": "object", "MAX_TOKENS": "int32", "TEMPERATURE": "float32", "TOP_P": "float32", "TOP_K": "int32",
        "SEED": "int64", "STOP": "object"}
    assert inputs["STOP"].tolist() == [b"\n"] and inputs["TEXT"].shape == (1,)
    ids = lc.generation_inputs([4, 5, 6])
    assert set(ids) == {"INPUT_IDS"} and ids["INPUT_IDS"].dtype == np.int64


@pytest.mark.parametrize("prompt", ["", [], ["a"], None])
def test_prompts_that_cannot_be_sent_are_refused(prompt: object) -> None:
    with pytest.raises(InferenceRequestError):
        lc.check_generation_args(prompt)


class FakeResult:
    """What tritonclient's stream callback gets: outputs by name and the response's parameters."""

    def __init__(self, arrays: dict[str, np.ndarray], final: bool) -> None:
        self.arrays = arrays
        flag = SimpleNamespace(bool_param=final)
        self.response = SimpleNamespace(parameters={"triton_final_response": flag})

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)

    def get_response(self) -> SimpleNamespace:
        return self.response


def test_responses_become_pieces() -> None:
    piece, final = lc._piece(FakeResult(piece_arrays("hé", [7]), False), at=10.5, started=10.0)
    assert not final and piece is not None
    assert (piece.text, piece.token_ids, piece.finish_reason, piece.since_start_s) == ("hé", [7], None, 0.5)
    piece, final = lc._piece(FakeResult(piece_arrays("", [], "eos", 3, 4), True), at=11.0, started=10.0)
    assert final and piece is not None and (piece.finish_reason, piece.prompt_tokens, piece.completion_tokens) == (
        "eos", 3, 4)
    assert lc._piece(FakeResult({}, True), 1.0, 0.0) == (None, True)  # an empty final response
    with pytest.raises(ServerError, match="TEXT_OUTPUT"):
        lc._piece(FakeResult({}, False), 1.0, 0.0)


def test_collect_adds_up_text_ids_and_speed() -> None:
    pieces = [lc.GeneratedPiece("", [], since_start_s=0.01), lc.GeneratedPiece("a", [1], since_start_s=0.1),
              lc.GeneratedPiece("b", [2], since_start_s=0.2),
              lc.GeneratedPiece("c", [3], "length", 2, 3, since_start_s=0.3)]
    result = lc.collect("p", iter(pieces))
    assert (result.text, result.token_ids, result.finish_reason, result.prompt_tokens) == ("abc", [1, 2, 3],
                                                                                          "length", 2)
    assert result.ttft_s == 0.1 and result.tokens_per_s == pytest.approx(2 / 0.2)
    assert lc.collect("p", iter(pieces[:2])).tokens_per_s is None


class StreamError(Exception):
    """A stream callback's error: a message and no status code (as Triton sends a model's errors on a stream)."""

    def message(self) -> str:
        return str(self.args[0])

    def status(self) -> None:
        return None


def test_stream_errors_are_typed() -> None:
    connection = SimpleNamespace(url="127.0.0.1:1", _translate=lambda exc, model: InferenceRequestError(str(exc)))
    failed = lc._stream_error(connection, "lm", StreamError(f"{ENGINE_FAILED}: out of memory"))  # type: ignore[arg-type]
    assert isinstance(failed, ServerError) and "out of memory" in str(failed)
    refused = lc._stream_error(connection, "lm", StreamError("max_tokens=-1: must be"))  # type: ignore[arg-type]
    assert isinstance(refused, InferenceRequestError)
