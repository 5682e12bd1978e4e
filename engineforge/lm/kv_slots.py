"""The KV cache of a decoder graph run by ONNX Runtime directly: one buffer per layer and key/value, shaped
[slots, kv_heads, capacity, head_size], one row (slot) per resident sequence.

The model builder's decoder (GroupQueryAttention) reads a sequence's past from its row and writes the new tokens'
keys and values in place when past and present are the same buffer ("share buffer"), at the positions the attention
mask gives each row: rows of different lengths decode in one call, each right-padded up to the longest. The rows in
use are kept contiguous from 0 (a finished sequence's row gets the last row's cache), so one call covers exactly the
decoding sequences. Capacity grows by doubling, up to the model's context, so memory follows the longest sequence
resident rather than the context length.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_CAPACITY = 256


class KVSlots:
    def __init__(self, layers: int, kv_heads: int, head_size: int, slots: int, max_capacity: int,
                 dtype: np.dtype, key_names: str, value_names: str, present_key: str, present_value: str) -> None:
        self.layers, self.kv_heads, self.head_size, self.slots = layers, kv_heads, head_size, slots
        self.max_capacity, self.dtype = max_capacity, np.dtype(dtype)
        self._names = [(key_names % i, value_names % i, present_key % i, present_value % i) for i in range(layers)]
        self.capacity = 0
        self._buffers: list[tuple[np.ndarray, np.ndarray]] = []
        self.ensure(min(MIN_CAPACITY, max_capacity))

    def ensure(self, length: int) -> None:
        """Room for `length` positions per row: a larger buffer (doubling) with the cached positions copied over."""
        if length <= self.capacity:
            return
        if length > self.max_capacity:
            raise ValueError(f"{length} positions exceed the context of {self.max_capacity}")
        capacity = max(self.capacity, MIN_CAPACITY)
        while capacity < length:
            capacity *= 2
        capacity = min(capacity, self.max_capacity)
        shape = (self.slots, self.kv_heads, capacity, self.head_size)
        grown = []
        for layer in range(self.layers):
            pair = (np.zeros(shape, self.dtype), np.zeros(shape, self.dtype))
            if self._buffers:
                for old, new in zip(self._buffers[layer], pair, strict=True):
                    new[:, :, : self.capacity] = old
            grown.append(pair)
        self._buffers, self.capacity = grown, capacity

    def bind(self, binding: Any, first: int, rows: int) -> None:
        """Bind rows first..first+rows-1 as each layer's past and present (the same memory: written in place)."""
        import onnxruntime as ort

        for (key, value), names in zip(self._buffers, self._names, strict=True):
            for buffer, past, present in ((key, names[0], names[2]), (value, names[1], names[3])):
                view = ort.OrtValue.ortvalue_from_numpy(buffer[first:first + rows])
                binding.bind_ortvalue_input(past, view)
                binding.bind_ortvalue_output(present, view)

    def move(self, source: int, target: int, length: int) -> None:
        """Copy row `source`'s first `length` positions into row `target` (compaction after a sequence leaves)."""
        for pair in self._buffers:
            for buffer in pair:
                buffer[target, :, :length] = buffer[source, :, :length]

    def empty_past(self) -> dict[str, np.ndarray]:
        """Zero-length past tensors for a call outside the slots (log-probs): present comes back separately."""
        empty = np.zeros((1, self.kv_heads, 0, self.head_size), self.dtype)
        return {name: empty for names in self._names for name in names[:2]}

    @property
    def megabytes(self) -> float:
        return round(2 * self.layers * self.slots * self.kv_heads * self.capacity * self.head_size
                     * self.dtype.itemsize / 1e6, 1)
