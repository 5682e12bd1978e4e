"""Registers the `onnxruntime-genai` LM runtime: a model-builder folder (model.onnx, genai_config.json) served by
ONNX Runtime GenAI's `og.Engine`, which keeps every request's KV cache and decodes its resident requests together.

On the CPU execution provider og.Engine (0.18) batches statically: the requests begun together decode together, and
one begun while they run waits until they have drained (measured; paged attention, which lets requests join a
running batch, is CUDA-only in the model builder). Its scheduler ignores the configured batch size and takes at most
4 (measured), so this engine begins at most `max_batch` turns at a time itself. Outputs do not depend on the batch.
A request that arrives while a batch decodes would wait for the whole batch (seconds under load), and a per-turn seed
is refused by a statically batched og.Engine: such a request runs on its own `og.Generator` ("solo", seeded through
its search options when sampling) and advances in the same `step()`, so it starts at once.

og.Engine accepts calls only from the thread that created it, while the driver may call `add` from a request's
thread and `step` from its scheduler thread: every og call therefore runs on one owner thread this engine keeps.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from engineforge.errors import EngineLoadError

from .engine import (
    CANCELLED,
    EOS,
    ERROR,
    LENGTH,
    STOP,
    InvalidGenerationRequest,
    SamplingParams,
    TokenEvent,
    check_prompt_ids,
    finish_reason_after,
)
from .runtimes import register_lm_runtime
from .sampling import next_token_log_probs

GENAI_CONFIG = "genai_config.json"
T = TypeVar("T")


@dataclass
class _Turn:
    """A sequence on og.Engine."""

    request: Any
    turn_id: int


@dataclass
class _Seeded:
    """A sequence on its own og.Generator: seeded sampling, or begun while a batch decodes."""

    generator: Any
    max_tokens: int
    generated: int = 0


class OrtGenAIEngine:
    runtime = "onnxruntime-genai"

    def __init__(self, model_dir: Path, eos_token_ids: Sequence[int], max_batch: int = 8,
                 threads: int | None = None, precision: str = "fp32") -> None:
        self._owner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ortgenai-engine")
        self._owner_thread = self._owner.submit(threading.current_thread).result()
        try:
            self._on_owner(self._open, Path(model_dir), eos_token_ids, max_batch, threads, precision)
        except BaseException:
            self._owner.shutdown(wait=False)
            raise

    def _on_owner(self, call: Callable[..., T], *args: Any) -> T:
        if threading.current_thread() is self._owner_thread:
            return call(*args)
        return self._owner.submit(call, *args).result()

    def close(self) -> None:
        """Release the og objects on their owner thread, then stop it (the engine is unusable afterwards)."""
        self._on_owner(self._release)
        self._owner.shutdown(wait=True)

    def _release(self) -> None:
        for turn in self._turns.values():
            turn.request.close()
        self._turns.clear()
        self._by_request.clear()
        self._seeded.clear()
        self._waiting.clear()
        self._engine = self._model = self._buffer = None

    def _open(self, model_dir: Path, eos_token_ids: Sequence[int], max_batch: int, threads: int | None,
              precision: str) -> None:
        import onnxruntime_genai as og

        self._og = og
        genai = read_genai_config(model_dir)
        model = genai["model"]
        self.max_length = int(model.get("context_length") or genai.get("search", {}).get("max_length") or 0)
        self.vocab_size = int(model["vocab_size"])
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.precision = precision
        session = model.get("decoder", {}).get("session_options", {})
        self.threads = threads or session.get("intra_op_num_threads")
        # Settings chosen at open time go in as an overlay: the folder on disk stays as the build wrote it.
        overlay: dict[str, Any] = {"engine": {"static_batching": {"max_batch_size": int(max_batch)}},
                                   "search": {"num_beams": 1}}
        if threads:
            overlay["model"] = {"decoder": {"session_options": {"intra_op_num_threads": int(threads)}}}
        config = og.Config(str(model_dir))
        config.overlay(json.dumps(overlay))
        self._model = og.Model(config)
        self._engine = og.Engine(self._model)
        # og 0.18's CPU static scheduler reports max_batch_size but decodes up to 4 begun turns together whatever
        # it says (measured), so turns are begun here only while fewer than max_batch are resident.
        self.max_batch = int(max_batch)
        self._buffer = self._engine.create_event_buffer(max(64, 4 * self.max_batch))
        self._next_id = 0
        self._waiting: deque[tuple[int, list[int], SamplingParams]] = deque()  # not yet begun on og.Engine
        self._turns: dict[int, _Turn] = {}
        self._by_request: dict[int, int] = {}  # id(og request) -> seq_id
        self._seeded: dict[int, _Seeded] = {}
        self._cancelled: set[int] = set()

    def add(self, prompt_ids: Sequence[int], params: SamplingParams) -> int:
        return self._on_owner(self._add, prompt_ids, params)

    def _add(self, prompt_ids: Sequence[int], params: SamplingParams) -> int:
        ids = check_prompt_ids(prompt_ids, params.max_tokens, self.max_length, self.vocab_size)
        seq_id = self._next_id
        self._next_id += 1
        if (not params.greedy and params.seed is not None) or self._turns:
            self._seeded[seq_id] = self._seeded_sequence(ids, params)
            return seq_id
        self._waiting.append((seq_id, ids, params))
        return seq_id

    def _admit(self) -> list[TokenEvent]:
        """Begin waiting turns while fewer than max_batch are resident (og checks the session length again)."""
        events = []
        while self._waiting and len(self._turns) < self.max_batch:
            seq_id, ids, params = self._waiting.popleft()
            request = self._engine.create_request()
            options = self._og.TurnOptions(request)
            options.set_max_generated_tokens(params.max_tokens)
            options.set_do_sample(not params.greedy)
            if not params.greedy:
                options.set_temperature(params.temperature)
                options.set_top_k(params.top_k or self.vocab_size)  # our 0 means no cut
                options.set_top_p(params.top_p)
            try:
                turn_id = request.begin_turn(np.asarray(ids, dtype=np.int32), options)
            except RuntimeError:  # add() checked the limits it knows; anything else ends this sequence only
                request.close()
                events.append(TokenEvent(seq_id, None, ERROR))
                continue
            self._turns[seq_id] = _Turn(request, turn_id)
            self._by_request[id(request)] = seq_id
        return events

    def _seeded_sequence(self, ids: list[int], params: SamplingParams) -> _Seeded:
        og = self._og
        search = og.GeneratorParams(self._model)
        sampling = {} if params.greedy else {"temperature": params.temperature, "top_p": params.top_p,
                                             "top_k": params.top_k or self.vocab_size, "random_seed": params.seed}
        search.set_search_options(max_length=len(ids) + params.max_tokens, do_sample=not params.greedy,
                                  num_beams=1, **{k: v for k, v in sampling.items() if v is not None})
        generator = og.Generator(self._model, search)
        generator.append_tokens(np.asarray([ids], dtype=np.int32))
        return _Seeded(generator, params.max_tokens)

    def cancel(self, seq_id: int) -> None:
        self._cancelled.add(seq_id)

    def has_work(self) -> bool:
        return bool(self._waiting or self._turns or self._seeded or self._cancelled)

    def step(self) -> list[TokenEvent]:
        return self._on_owner(self._step)

    def _step(self) -> list[TokenEvent]:
        events = self._take_cancelled()
        events += self._admit()
        if self._engine.has_pending_requests():
            for event in self._engine.run(self._buffer):
                mapped = self._map_event(event)
                if mapped is not None:
                    events.append(mapped)
        for seq_id, seq in list(self._seeded.items()):
            events.append(self._step_seeded(seq_id, seq))
        return events

    def _take_cancelled(self) -> list[TokenEvent]:
        events = []
        for seq_id in self._cancelled:
            if seq_id in self._turns:  # og reports CANCELLED from its next run
                turn = self._turns[seq_id]
                turn.request.cancel_turn(turn.turn_id)
            elif self._seeded.pop(seq_id, None) is not None:
                events.append(TokenEvent(seq_id, None, CANCELLED))
            elif any(waiting[0] == seq_id for waiting in self._waiting):
                self._waiting = deque(w for w in self._waiting if w[0] != seq_id)
                events.append(TokenEvent(seq_id, None, CANCELLED))
        self._cancelled.clear()
        return events

    def _map_event(self, event: Any) -> TokenEvent | None:
        flags = self._og.EngineEventFlags
        seq_id = self._by_request.get(id(event.request))
        if seq_id is None:
            return None
        bits = int(event.flags)
        token = int(event.token) if bits & int(flags.TOKEN) and event.token is not None else None
        reason = None
        if bits & int(flags.FAILED):
            reason = ERROR
        elif bits & int(flags.TURN_FINISHED):
            reason = _FINISH.get(event.finish_reason.name, ERROR)
        if reason is not None:
            turn = self._turns.pop(seq_id)
            del self._by_request[id(turn.request)]
            turn.request.close()
        if token is None and reason == EOS and len(self.eos_token_ids) == 1:
            # og's EOS event carries no token; the torch engine emits the EOS token with it, and so does this
            # one when there is only one it can be (with several, which one ended it is unknown: None).
            token = next(iter(self.eos_token_ids))
        if token is None and reason is None:
            return None
        return TokenEvent(seq_id, None if reason == CANCELLED else token, reason)

    def _step_seeded(self, seq_id: int, seq: _Seeded) -> TokenEvent:
        seq.generator.generate_next_token()
        token = int(seq.generator.get_next_tokens()[0])
        seq.generated += 1
        reason = finish_reason_after(token, seq.generated, seq.max_tokens, self.eos_token_ids,
                                     out_of_room=seq.generator.is_done())
        if reason is not None:
            del self._seeded[seq_id]
        return TokenEvent(seq_id, token, reason)

    def log_probs(self, ids: Sequence[int]) -> list[float]:
        return self._on_owner(self._log_probs, [int(t) for t in ids])

    def _log_probs(self, ids: list[int]) -> list[float]:
        """A fresh og.Generator prefills `ids` once; the decoder's logits output holds every position's scores."""
        if len(ids) < 2 or len(ids) > self.max_length:
            raise InvalidGenerationRequest(f"log_probs needs 2 to {self.max_length} tokens, got {len(ids)}")
        og = self._og
        search = og.GeneratorParams(self._model)
        search.set_search_options(max_length=min(len(ids) + 1, self.max_length), num_beams=1)
        generator = og.Generator(self._model, search)
        generator.append_tokens(np.asarray([ids], dtype=np.int32))
        logits = np.asarray(generator.get_output("logits"), dtype=np.float64)[0]
        if logits.shape[0] != len(ids):
            raise EngineLoadError(f"the decoder returned logits for {logits.shape[0]} of {len(ids)} positions "
                                  "(built with prune_lm_head?); rebuild without it to measure perplexity")
        return next_token_log_probs(logits[:-1], ids)

    def settings(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "precision": self.precision, "threads": self.threads,
                "max_batch": self.max_batch, "max_length": self.max_length, "execution_provider": "cpu",
                "batching": "static: og.Engine on CPU decodes the turns begun together (at most max_batch, and at "
                            "most 4 in og 0.18); a request added while they run waits for them to drain"}


_FINISH = {"EOS": EOS, "MAX_GENERATED_TOKENS": LENGTH, "MAX_SESSION_TOKENS": LENGTH, "CANCELLED": CANCELLED,
           "STOP_STRING": STOP, "FAILED": ERROR}


def read_genai_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / GENAI_CONFIG
    if not path.is_file():
        raise EngineLoadError(f"{path} is missing: {model_dir} is not an ONNX Runtime GenAI model folder; rebuild "
                              "the engine")
    try:
        genai = json.loads(path.read_text())
        genai["model"]["vocab_size"]
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineLoadError(f"{path} is not a valid genai config ({type(exc).__name__}: {exc}); rebuild the "
                              "engine") from exc
    return genai


@register_lm_runtime("onnxruntime-genai")
def open_ortgenai_lm(spec: Any, model_dir: Path, threads: int | None = None, max_batch: int = 8) -> OrtGenAIEngine:
    return OrtGenAIEngine(model_dir, spec.eos_token_ids, max_batch=max_batch, threads=threads,
                          precision=spec.precision)
