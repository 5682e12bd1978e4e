"""PyTorch runtime for causal LMs: any `*ForCausalLM` transformers loads (fp32, or bitsandbytes 4-bit), with its KV
cache kept per sequence between steps (the prompt is computed once, then one token per step).

Each step prefills the sequences added since the last one, then decodes one token for every active sequence.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engine import CANCELLED, SamplingParams, TokenEvent, check_prompt_ids, finish_reason_after
from .sampling import choose_token, new_rng


@dataclass
class _Sequence:
    seq_id: int
    ids: list[int]
    params: SamplingParams
    rng: np.random.Generator
    prompt_len: int
    cache: Any = None
    generated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class TorchLMEngine:
    runtime = "torch"

    def __init__(self, model: Any, eos_token_ids: Sequence[int], max_batch: int = 8, threads: int | None = None,
                 precision: str = "fp32") -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.max_batch = max_batch
        config = model.config
        self.max_length = int(getattr(config, "max_position_embeddings", None) or config.n_positions)
        self.precision = precision
        self._next_id = 0
        self._waiting: deque[_Sequence] = deque()
        self._active: dict[int, _Sequence] = {}
        self._cancelled: set[int] = set()

    def add(self, prompt_ids: Sequence[int], params: SamplingParams) -> int:
        ids = check_prompt_ids(prompt_ids, params.max_tokens, self.max_length)
        seq = _Sequence(self._next_id, ids, params, new_rng(params), len(ids))
        self._next_id += 1
        self._waiting.append(seq)
        return seq.seq_id

    def cancel(self, seq_id: int) -> None:
        self._cancelled.add(seq_id)

    def has_work(self) -> bool:
        return bool(self._waiting or self._active or self._cancelled)

    def step(self) -> list[TokenEvent]:
        import torch

        events = self._take_cancelled()
        while self._waiting and len(self._active) < self.max_batch:
            seq = self._waiting.popleft()
            self._active[seq.seq_id] = seq
        with torch.inference_mode():
            for seq in list(self._active.values()):
                feed = seq.ids if seq.cache is None else seq.ids[-1:]  # the last token chosen is not cached yet
                out = self.model(input_ids=torch.tensor([feed]), cache=seq.cache, use_cache=True)
                seq.cache = out.cache
                token = choose_token(out.logits[0, -1].float().numpy(), seq.params, seq.rng)
                seq.ids.append(token)
                seq.generated += 1
                reason = finish_reason_after(token, seq.generated, seq.params.max_tokens, self.eos_token_ids)
                events.append(TokenEvent(seq.seq_id, token, reason))
                if reason is not None:
                    del self._active[seq.seq_id]
        return events

    def _take_cancelled(self) -> list[TokenEvent]:
        events = []
        for seq_id in self._cancelled:
            if self._active.pop(seq_id, None) is not None:
                events.append(TokenEvent(seq_id, None, CANCELLED))
            elif any(s.seq_id == seq_id for s in self._waiting):
                self._waiting = deque(s for s in self._waiting if s.seq_id != seq_id)
                events.append(TokenEvent(seq_id, None, CANCELLED))
        self._cancelled.clear()
        return events

    def log_probs(self, ids: Sequence[int]) -> list[float]:
        import torch

        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([list(ids)])).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            return logp.gather(1, torch.tensor(list(ids[1:]))[:, None])[:, 0].tolist()

    def settings(self) -> dict[str, Any]:
        import torch

        return {"runtime": self.runtime, "precision": self.precision, "threads": torch.get_num_threads(),
                "max_batch": self.max_batch, "max_length": self.max_length}
