"""Incremental detokenization: text pieces as tokens arrive, never a broken character, the same text in the end as
decoding all tokens at once.

Byte-level BPE (GPT-2, LLaMA-3, Qwen2) and SentencePiece byte fallback split one character across tokens, and some
tokenizers merge spaces differently at a boundary: decoding token by token would print U+FFFD or lose spaces. As in
vLLM and Hugging Face's TextStreamer, each step decodes a short window of recent tokens and emits what it adds beyond
the text already emitted, holding back while the window ends in an incomplete character.
"""

from __future__ import annotations

from typing import Any

# Tokens re-decoded before the new ones: enough context for any tokenizer's boundary rules.
_CONTEXT = 6


class Detokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int] | None = None) -> None:
        self.tokenizer = tokenizer
        # Start with a little prompt context so the first generated token decodes as it would mid-text (a leading
        # space is kept rather than stripped as at the start of a text).
        self.ids: list[int] = list(prompt_ids or [])[-_CONTEXT:]
        self.prefix_offset = 0  # start of the window re-decoded each step
        self.read_offset = len(self.ids)  # tokens before this are already emitted
        self.generated: list[int] = []

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """The text this token completes ("" while a character is still incomplete)."""
        self.ids.append(token_id)
        self.generated.append(token_id)
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        after = self._decode(self.ids[self.prefix_offset:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """What is still held back at the end (an incomplete character is emitted as decoded)."""
        before = self._decode(self.ids[self.prefix_offset:self.read_offset])
        after = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return after[len(before):] if len(after) > len(before) else ""
