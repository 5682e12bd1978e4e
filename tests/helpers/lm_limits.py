"""What every LM engine must refuse at `add`, checked the same way for each runtime (tiny LMs of 256 positions and a
vocabulary under 10 000 ids)."""

from __future__ import annotations

from typing import Any

import pytest

from engineforge.lm.engine import InvalidGenerationRequest, SamplingParams


def assert_refuses_unservable_prompts(engine: Any) -> None:
    """Too long for the positions, empty, or ids outside the vocabulary: refused, and nothing is queued."""
    with pytest.raises(InvalidGenerationRequest, match="exceeds the model's 256 positions"):
        engine.add([5] * 250, SamplingParams(max_tokens=16))
    with pytest.raises(InvalidGenerationRequest, match="empty"):
        engine.add([], SamplingParams())
    with pytest.raises(InvalidGenerationRequest, match="outside the vocabulary"):
        engine.add([1, 10_000], SamplingParams(max_tokens=4))
    assert not engine.has_work()
