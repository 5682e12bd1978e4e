"""Sequence-length distributions of tokens mode: parsing with the fix in the message, and draws within bounds."""

from __future__ import annotations

import numpy as np
import pytest

from engineforge.errors import ConfigError
from engineforge.loadtest.config import LoadTestConfig
from engineforge.loadtest.lengths import parse_lengths


@pytest.mark.parametrize("spec, kind, longest", [
    ("128", "fixed", 128), (64, "fixed", 64), ("32-256", "uniform", 256), ("32,64,128", "choice", 128),
    ("normal:96,32", "normal", 224),
])
def test_specs_parse_to_their_kind_and_longest_draw(spec, kind, longest):
    dist = parse_lengths(spec)
    assert dist.kind == kind and dist.max_length == longest


@pytest.mark.parametrize("spec", ["0", "abc", "256-32", "normal:96", "normal:-5,3", "32,0", ""])
def test_bad_specs_name_the_accepted_forms(spec):
    with pytest.raises(ConfigError, match="give 128, a range 32-256, a list 32,64,128 or normal:MEAN,STD"):
        parse_lengths(spec)


def test_draws_stay_in_bounds_and_follow_the_distribution():
    rng = np.random.default_rng(0)
    uniform = parse_lengths("10-20").sample(rng, 5000)
    assert uniform.min() == 10 and uniform.max() == 20 and abs(uniform.mean() - 15) < 0.3
    choice = parse_lengths("8,16").sample(rng, 5000)
    assert set(choice.tolist()) == {8, 16}
    normal = parse_lengths("normal:50,10").sample(rng, 5000)
    assert normal.min() >= 1 and normal.max() <= 90 and abs(normal.mean() - 50) < 1 and 9 < normal.std() < 11
    assert (parse_lengths("7").sample(rng, 3) == 7).all()


def test_the_load_test_config_refuses_a_bad_length_in_tokens_mode_only():
    with pytest.raises(ConfigError, match="sequence length 'x-y'"):
        LoadTestConfig(model="m", mode="tokens", seq_len="x-y")
    LoadTestConfig(model="m", mode="text", seq_len="x-y")  # not used in text mode
    with pytest.raises(ConfigError, match="expected labels are checked in text mode only"):
        LoadTestConfig(model="m", mode="tokens", texts=("a",), labels=("x",))
    with pytest.raises(ConfigError, match="2 expected labels for 1 texts"):
        LoadTestConfig(model="m", texts=("a",), labels=("x", "y"))
