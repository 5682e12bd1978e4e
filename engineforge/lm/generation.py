"""The generation driver: text in, text pieces out, over any `LMEngine`.

`Generation` follows one request: prompt tokens, the pieces of text decoded so far, stop strings, its counts. The
`Scheduler` owns an engine and one thread that calls `engine.step()` while any request is active, so concurrent
requests share every decode step (continuous batching); each request's pieces go to its own callback as soon as they
are decoded. `generate()` is the in-process, single-caller form used by builds, benchmarks and tests.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .detokenize import Detokenizer
from .engine import CANCELLED, ERROR, STOP, LMEngine, SamplingParams


@dataclass
class Piece:
    """What one step gave one request: new text and its token ids; the last piece has finish_reason set."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Generation:
    prompt_ids: list[int]
    params: SamplingParams
    detokenizer: Detokenizer
    text: str = ""  # emitted so far (without any stop string)
    pending: str = ""  # decoded but held back: it could be the start of a stop string
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    def on_token(self, token_id: int | None, finish_reason: str | None) -> Piece | None:
        """Feed one engine event; returns the piece to send (None when nothing is ready yet)."""
        if self.finish_reason is not None:
            return None
        new_ids: list[int] = []
        if token_id is not None and finish_reason != CANCELLED:
            new_ids = [token_id]
            self.token_ids.append(token_id)
            self.pending += self.detokenizer.add(token_id)
        if finish_reason is not None:
            self.pending += self.detokenizer.flush()
        stopped = self._apply_stop()
        if stopped:
            finish_reason = STOP
        out = self.pending if (finish_reason is not None) else self._releasable()
        self.pending = self.pending[len(out):]
        self.text += out
        if finish_reason is not None:
            self.finish_reason = finish_reason
        if not out and not new_ids and finish_reason is None:
            return None
        return Piece(out, new_ids, finish_reason, len(self.prompt_ids), len(self.token_ids))

    def _apply_stop(self) -> bool:
        """Cut the text at the first stop string; True when one matched."""
        if not self.params.stop:
            return False
        whole = self.text + self.pending
        hits = [i for i in (whole.find(s, max(0, len(self.text) - len(s))) for s in self.params.stop) if i >= 0]
        if not hits:
            return False
        cut = min(hits)
        self.pending = whole[len(self.text):cut] if cut >= len(self.text) else ""
        self.text = whole[:min(cut, len(self.text))]
        return True

    def _releasable(self) -> str:
        """Pending text that cannot be the beginning of a stop string."""
        if not self.params.stop:
            return self.pending
        hold = 0
        for stop in self.params.stop:
            for k in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        return self.pending[:len(self.pending) - hold]


def generate(engine: LMEngine, tokenizer: Any, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[Piece]:
    """One request in process: its pieces as they are decoded (the engine must have no other work)."""
    generation = Generation(list(prompt_ids), params, Detokenizer(tokenizer, list(prompt_ids)))
    seq_id = engine.add(prompt_ids, params)
    while generation.finish_reason is None:
        for event in engine.step():
            if event.seq_id != seq_id:
                continue
            piece = generation.on_token(event.token_id, event.finish_reason)
            if piece is not None:
                if piece.finish_reason == STOP and event.finish_reason is None:
                    engine.cancel(seq_id)
                yield piece
        if generation.finish_reason is None and not engine.has_work():
            yield Piece("", [], ERROR, len(generation.prompt_ids), len(generation.token_ids))
            return
    while engine.has_work():  # drain a cancelled sequence's last event
        engine.step()


Callback = Callable[[Piece], None]
AHEAD = 16  # pieces the engine may decode ahead of what has been sent


class Scheduler:
    """Runs an engine on one thread for many concurrent requests (continuous batching)."""

    def __init__(self, engine: LMEngine, tokenizer: Any) -> None:
        self.engine, self.tokenizer = engine, tokenizer
        self._lock = threading.Condition()
        self._incoming: list[tuple[Generation, Callback, list[int]]] = []
        self._cancels: set[int] = set()
        self._active: dict[int, tuple[Generation, Callback]] = {}
        self._closed = False
        self.steps = 0
        self.busy_seconds = 0.0
        # Pieces go out on their own thread: a send (one gRPC response each when served) then overlaps the next
        # engine step instead of delaying it. One FIFO thread keeps every request's pieces in order.
        # Bounded: the engine runs at most AHEAD pieces ahead of the sends, so a slow client holds the engine back
        # (backpressure, and a cancelled stream is noticed before its sequence decodes much further).
        self._outbox: queue.SimpleQueue[tuple[Callback, Piece] | None] = queue.SimpleQueue()
        self._room = threading.Semaphore(AHEAD)
        self._sender = threading.Thread(target=self._send_loop, name="lm-sender", daemon=True)
        self._sender.start()
        self._thread = threading.Thread(target=self._loop, name="lm-scheduler", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, callback: Callback) -> list[int]:
        """Queue a request; returns a handle for `cancel`. Prompt errors raise here, in the caller's thread."""
        generation = Generation(list(prompt_ids), params, Detokenizer(self.tokenizer, list(prompt_ids)))
        handle: list[int] = []
        with self._lock:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            handle.append(self.engine.add(prompt_ids, params))  # engines are called under the lock only
            self._active[handle[0]] = (generation, callback)
            self._lock.notify()
        return handle

    def cancel(self, handle: list[int]) -> None:
        with self._lock:
            if handle and handle[0] in self._active:
                self._cancels.add(handle[0])
                self._lock.notify()

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._active)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for seq_id in list(self._active):
                self._cancels.add(seq_id)
            self._lock.notify()
        self._thread.join(timeout=30)
        self._outbox.put(None)
        self._sender.join(timeout=30)

    def _send_loop(self) -> None:
        while (item := self._outbox.get()) is not None:
            _deliver(*item)
            self._room.release()

    def _send(self, deliveries: list[tuple[Callback, Piece]]) -> None:
        """Queue pieces for the sender; called outside the lock (it may wait for room, and a send's callback may
        cancel a sequence, which takes the lock)."""
        for item in deliveries:
            self._room.acquire()
            self._outbox.put(item)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._active and not self._closed:
                    self._lock.wait()
                if self._closed and not self._active:
                    return
                deliveries = self._step_locked()
            self._send(deliveries)

    def _step_locked(self) -> list[tuple[Callback, Piece]]:
        """One engine step under the lock; the pieces it produced, to send."""
        for seq_id in self._cancels:
            self.engine.cancel(seq_id)
        self._cancels.clear()
        started = time.perf_counter()
        try:
            events = self.engine.step()
        except Exception as exc:  # an engine failure ends every active request with an error, not a hang
            failed, self._active = self._active, {}
            return [(callback, Piece(f"engine failed: {exc}", [], ERROR, len(generation.prompt_ids),
                                     len(generation.token_ids))) for generation, callback in failed.values()]
        self.busy_seconds += time.perf_counter() - started
        self.steps += 1
        deliveries = []
        for event in events:
            entry = self._active.get(event.seq_id)
            if entry is None:
                continue
            generation, callback = entry
            piece = generation.on_token(event.token_id, event.finish_reason)
            if generation.finish_reason is not None:
                del self._active[event.seq_id]
                if event.finish_reason is None:  # a stop string ended it: free the engine's sequence
                    self.engine.cancel(event.seq_id)
            if piece is not None:
                deliveries.append((callback, piece))
        return deliveries


def _deliver(callback: Callback, piece: Piece) -> None:
    try:
        callback(piece)
    except Exception:  # a failed send (client gone) must not stop the other requests
        pass
