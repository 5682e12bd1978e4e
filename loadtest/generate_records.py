"""The record of one streamed generation (`--mode generate`): when the request went out, when each piece of text
came back and how many tokens it carried, how it finished.

`GenerationRecord` *is* a `RequestResult` (a subclass with more fields), so the closed- and open-loop runners,
worker processes, stability windows and the request-level metrics (e2e latency = `latency_s`, requests/s) work on
it unchanged; loadtest/generate_metrics.py reads the streaming fields. Every time is a `clock()` time (monotonic
seconds, the runners' time line), so records from every level and worker process compare directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .records import RequestResult, clock

FINISH_REASONS = ("eos", "length", "stop", "cancelled", "error")


@dataclass(frozen=True, slots=True)
class GenerationRecord(RequestResult):
    """One streamed request. A piece is a response that carried output tokens; `piece_s[i]` is when piece i
    arrived, `piece_tokens[i]` how many tokens it carried (TOKEN_IDS length). An empty final response is not a
    piece. `output_tokens` is the server's COMPLETION_TOKENS when the final response carried it, else the
    streamed count (`sum(piece_tokens)`); `prompt_tokens` is the server's PROMPT_TOKENS (None when not sent)."""

    piece_s: tuple[float, ...] = ()
    piece_tokens: tuple[int, ...] = ()
    prompt_tokens: int | None = None
    output_tokens: int = 0
    finish_reason: str | None = None
    max_tokens: int | None = None  # what the request asked for (MAX_TOKENS), None when not sent
    prompt_chars: int = 0
    plan_index: int | None = None  # which request of the run's plan was sent (loadtest/prompts.py request_plan)

    @property
    def first_token_s(self) -> float | None:
        """When the first piece arrived (None: no token came back)."""
        return self.piece_s[0] if self.piece_s else None

    @property
    def streamed_tokens(self) -> int:
        return sum(self.piece_tokens)

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["piece_s"], data["piece_tokens"] = list(self.piece_s), list(self.piece_tokens)
        return data


class StreamCollector:
    """Accumulates one stream's responses as they arrive (the request function feeds it; pure apart from the
    clock read in `piece`, so tests can feed it times)."""

    def __init__(self, start_s: float) -> None:
        self.start_s = start_s
        self.piece_s: list[float] = []
        self.piece_tokens: list[int] = []
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.finish_reason: str | None = None
        self.text: list[str] = []

    def piece(self, tokens: int, text: str = "", at: float | None = None) -> None:
        if tokens > 0:  # a response with no tokens (e.g. the empty final one) is not a piece
            self.piece_s.append(clock() if at is None else at)
            self.piece_tokens.append(tokens)
            self.text.append(text)

    def final(self, finish_reason: str | None, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        self.finish_reason = finish_reason or self.finish_reason
        self.prompt_tokens = prompt_tokens if prompt_tokens is not None else self.prompt_tokens
        self.completion_tokens = completion_tokens if completion_tokens is not None else self.completion_tokens

    def record(self, end_s: float, *, ok: bool = True, error: str | None = None, error_kind: str | None = None,
               status: str | None = None, max_tokens: int | None = None, prompt_chars: int = 0,
               plan_index: int | None = None) -> GenerationRecord:
        streamed = sum(self.piece_tokens)
        output = self.completion_tokens if self.completion_tokens is not None else streamed
        return GenerationRecord(
            start_s=self.start_s, latency_s=max(end_s - self.start_s, 0.0), ok=ok, error=error,
            error_kind=error_kind, status=status, output="".join(self.text)[:200] or None,
            piece_s=tuple(self.piece_s), piece_tokens=tuple(self.piece_tokens), prompt_tokens=self.prompt_tokens,
            output_tokens=output, finish_reason=self.finish_reason if ok else (self.finish_reason or "error"),
            max_tokens=max_tokens, prompt_chars=prompt_chars, plan_index=plan_index)


def progress_note(records: list[Any], window_elapsed_s: float) -> str:
    """What a progress line adds for generation records: output tokens answered in the window so far and their rate
    ("" for other records, so the runners can always call it)."""
    from .records import MEASURE

    answered = [r for r in records if isinstance(r, GenerationRecord) and r.ok
                and (r.completed_phase or r.phase) == MEASURE]
    if not answered or window_elapsed_s <= 0:
        return ""
    tokens = sum(r.output_tokens for r in answered)
    return f", {tokens} output tokens ({tokens / window_elapsed_s:.1f} tok/s)"
