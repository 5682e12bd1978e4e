"""Calibration data for static int8: real examples, tokenized like serving, padded to one fixed length.

Static quantization fixes every activation's int8 range ahead of time from the ranges seen on
calibration inputs, so those inputs must look like production traffic. They are never invented:
without `--calibration-data` the static steps refuse to run.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engineforge import progress
from engineforge.data import Example
from engineforge.engines import encode
from engineforge.errors import DataError
from engineforge.file_modes import follow_umask

# Batches are collected this many at a time: histogram calibrators (percentile, entropy) keep every
# intermediate activation of a collect call in memory, which for MiniLM at 128 tokens is ~25 MB per example.
CHUNK_BATCHES = 8


def require_calibration_examples(examples: Sequence[Example], step_type: str, limit: int | None) -> list[Example]:
    """The calibration examples to use, or a DataError naming the flag that supplies them."""
    if not examples:
        raise DataError(
            f"step '{step_type}' needs representative calibration data to fix int8 activation ranges: "
            "pass --calibration-data FILE (.jsonl/.csv with a 'text' column; a few hundred real requests, "
            "e.g. your training texts), or use the dynamic 'int8' preset, which needs none"
        )
    return list(examples[:limit]) if limit is not None else list(examples)


def fixed_length(tokenizer: Any, texts: Sequence[str], max_length: int) -> int:
    """Longest tokenized text (after truncation): one length for every batch, shortest that loses nothing.

    Percentile/entropy calibrators stack activations of all batches into one array, so batches of
    different lengths crash them ("inhomogeneous shape"); padding to `max_length` instead would waste
    calibration time on pad tokens when real texts are short.
    """
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    return max(len(ids) for ids in encoded["input_ids"])


def pad_to(arrays: dict[str, np.ndarray], length: int, pad_token_id: int) -> dict[str, np.ndarray]:
    """Right-pad a batch from `encode` to `length`: pad ids, mask 0, segment 0 (what the tokenizer pads with)."""
    padded = {}
    for name, array in arrays.items():
        missing = length - array.shape[1]
        if missing < 0:
            raise ValueError(f"batch is {array.shape[1]} tokens long, longer than the fixed length {length}")
        value = pad_token_id if name == "input_ids" else 0
        padded[name] = np.pad(array, ((0, 0), (0, missing)), constant_values=value)
    return padded


class TextCalibrationReader:
    """An onnxruntime.quantization `CalibrationDataReader` over real texts (duck-typed: ORT checks for
    `get_next`). Batches are encoded lazily with engines.encode (the served tokenization), then padded to one
    fixed length."""

    def __init__(self, tokenizer: Any, texts: Sequence[str], input_names: Sequence[str], *, max_length: int,
                 batch_size: int = 16, length: int | None = None, label: str = "calibration batches") -> None:
        if not texts:
            raise DataError("calibration needs at least one text")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tokenizer, self.input_names, self.max_length = tokenizer, list(input_names), max_length
        self.length = length or fixed_length(tokenizer, texts, max_length)
        self.pad_token_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
        self.chunks = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        self.label = label
        self._start, self._end, self._next = 0, len(self.chunks), 0
        self.delivered = 0

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self) -> TextCalibrationReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.get_next()
        if batch is None:
            raise StopIteration
        return batch

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only batches [start_index, end_index) from now on (ORT's strided-calibration hook)."""
        self._start, self._end = max(0, start_index), min(end_index, len(self.chunks))
        self._next = self._start

    def rewind(self) -> None:
        self.set_range(0, len(self.chunks))
        self.delivered = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        texts = self.chunks[self._next]
        self._next += 1
        self.delivered += 1
        arrays = encode(self.tokenizer, texts, self.max_length, self.input_names)
        # About five progress lines per calibration pass, whatever its length.
        progress.counter(f"  {self.label}", self.delivered, len(self.chunks), every=-(-len(self.chunks) // 5))
        return pad_to({n: arrays[n] for n in self.input_names}, self.length, self.pad_token_id)


def _not_preprocess_advice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Please consider to run pre-processing")


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """ORT's calibrators print progress to stdout (build-engine's stdout is the report), and every
    quantize_static call advises pre-processing, which the unfused export does not need."""
    root = logging.getLogger()
    root.addFilter(_not_preprocess_advice)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        root.removeFilter(_not_preprocess_advice)


def calibrate(model_path: Path, reader: TextCalibrationReader, method: Any, op_types: Sequence[str],
              extra_options: dict[str, Any], cache_path: Path, scratch_dir: Path) -> Path:
    """Run the calibrator chunk by chunk and save the activation ranges to `cache_path`.

    The cache is what `quantize_static(calibration_cache_path=...)` reads back, so every later
    quantization of the same graph (the fallback search builds many) skips calibration entirely.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        Path(model_path), list(op_types), augmented_model_path=str(scratch_dir / "augmented.onnx"),
        calibrate_method=method, extra_options=extra_options,
    )
    reader.rewind()
    for start in range(0, len(reader), CHUNK_BATCHES):
        reader.set_range(start, start + CHUNK_BATCHES)
        calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache_path)
    follow_umask(cache_path)  # onnxruntime writes it through mkstemp (0600)
    del calibrator  # frees the augmented session before quantization loads the model again
    return cache_path
