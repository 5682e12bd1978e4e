"""Sequence-length distributions for tokens mode (`--seq-len`): real traffic is not all one length, and an
encoder's cost grows with it, so a fixed 128 can flatter or punish an engine.

Spec strings (parsed once, validated with the fix in the message):
    128            every item 128 tokens
    32-256         uniform over 32..256 (inclusive)
    32,64,128      one of these, equally likely
    normal:96,32   normal with mean 96 and std 32, rounded, clipped to 1..mean+4*std
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engineforge.errors import ConfigError

KINDS = ("fixed", "uniform", "choice", "normal")


@dataclass(frozen=True)
class LengthDistribution:
    kind: str
    values: tuple[float, ...]  # fixed: (n,); uniform: (lo, hi); choice: the lengths; normal: (mean, std)
    spec: str

    @property
    def max_length(self) -> int:
        """The longest length it can draw (compare with the model's maximum sequence length)."""
        if self.kind == "normal":
            mean, std = self.values
            return round(mean + 4 * std)
        return int(max(self.values))

    @property
    def fixed(self) -> bool:
        return self.kind == "fixed"

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` lengths (int64, each >= 1)."""
        if self.kind == "fixed":
            out = np.full(size, self.values[0])
        elif self.kind == "uniform":
            out = rng.integers(int(self.values[0]), int(self.values[1]) + 1, size=size)
        elif self.kind == "choice":
            out = rng.choice(np.array(self.values), size=size)
        else:
            mean, std = self.values
            out = np.clip(np.rint(rng.normal(mean, std, size=size)), 1, self.max_length)
        return out.astype(np.int64)


def parse_lengths(spec: str | int) -> LengthDistribution:
    text = str(spec).strip().replace(" ", "")
    hint = "give 128, a range 32-256, a list 32,64,128 or normal:MEAN,STD (e.g. normal:96,32)"
    try:
        if text.startswith("normal:"):
            mean, std = (float(v) for v in text[len("normal:"):].split(","))
            if not (mean >= 1 and std >= 0):
                raise ValueError
            return LengthDistribution("normal", (mean, std), text)
        if "-" in text:
            lo, hi = (int(v) for v in text.split("-"))
            if not 1 <= lo <= hi:
                raise ValueError
            return LengthDistribution("uniform", (lo, hi), text)
        values = tuple(int(v) for v in text.split(","))
        if not values or min(values) < 1:
            raise ValueError
        if len(values) == 1:
            return LengthDistribution("fixed", values, text)
        return LengthDistribution("choice", values, text)
    except ValueError:
        raise ConfigError(f"sequence length {spec!r}: {hint}; every length >= 1") from None
