"""Generate-mode requests: synthetic prompts of drawn lengths, prompts files, MAX_TOKENS plans, and the settings and
flags that carry them."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from engineforge.errors import ConfigError, DataError, UsageError
from engineforge.loadtest import cli
from engineforge.loadtest.config import LoadTestConfig
from engineforge.loadtest.prompts import WORDS, load_prompts, request_plan, synthetic_prompt


def test_synthetic_prompts_have_the_drawn_word_counts():
    plan = request_plan((), 12, 7, size=20)
    assert len(plan) == 20
    assert {len(r.prompt.split()) for r in plan} == {12}
    assert {r.max_tokens for r in plan} == {7}
    assert all(w in WORDS for r in plan for w in r.prompt.split())


@pytest.mark.parametrize("spec", ["16-24", "16:24"])
def test_ranges_in_both_spellings_stay_in_bounds(spec):
    lengths = [len(r.prompt.split()) for r in request_plan((), spec, "4:8", size=200)]
    assert 16 <= min(lengths) and max(lengths) <= 24 and len(set(lengths)) > 3


def test_plans_are_seeded_and_max_tokens_can_be_left_out():
    assert request_plan((), "4-40", "8,16", seed=3) == request_plan((), "4-40", "8,16", seed=3)
    assert request_plan((), "4-40", None, seed=3) != request_plan((), "4-40", None, seed=4)
    assert {r.max_tokens for r in request_plan((), 8, None, size=5)} == {None}
    assert synthetic_prompt(0, np.random.default_rng(0)).count(" ") == 0  # at least one word


def test_file_prompts_keep_their_order_and_cycle_when_max_tokens_varies():
    fixed = request_plan(("a b", "c"), 99, 5)
    assert [r.prompt for r in fixed] == ["a b", "c"] and {r.max_tokens for r in fixed} == {5}
    varied = request_plan(("a b", "c"), 99, "1-50", size=10)
    assert [r.prompt for r in varied[:4]] == ["a b", "c", "a b", "c"] and len(varied) == 10


def test_bad_max_tokens_names_the_flag():
    with pytest.raises(ConfigError, match="--max-tokens"):
        request_plan((), 8, "lots")


def test_prompts_file_reads_prompt_or_text_and_names_the_bad_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hello there"}\n\n{"text": "second"}\n')
    assert load_prompts(path) == ["hello there", "second"]
    path.write_text('{"prompt": "ok"}\n{"question": "no"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:2: no \"prompt\""):
        load_prompts(path)
    path.write_text("not json\n")
    with pytest.raises(DataError, match=r"p\.jsonl:1: not valid JSON"):
        load_prompts(path)
    path.write_text("\n")
    with pytest.raises(DataError, match="has no prompts"):
        load_prompts(path)
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(tmp_path / "missing.jsonl")


def test_generate_settings_are_checked():
    with pytest.raises(ConfigError, match="--batch-size 1"):
        LoadTestConfig(model="lm", mode="generate", batch_size=4)
    with pytest.raises(ConfigError, match="--prompt-len"):
        LoadTestConfig(model="lm", mode="generate", prompt_len="short")
    config = LoadTestConfig(model="lm", mode="generate", prompts=("a",), max_tokens=None)
    assert config.to_dict()["n_prompts"] == 1 and "prompts" not in config.to_dict()


def parse(*argv: str) -> argparse.Namespace:
    top = argparse.ArgumentParser(prog="engineforge")
    cli.add_parser(top.add_subparsers(dest="command", required=True))
    return top.parse_args(["loadtest", *argv])


def test_generate_flags_reach_the_config(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "tell me a story"}\n')
    config = cli.config_from_args(parse("--model", "lm", "--mode", "generate", "--prompts", str(prompts),
                                        "--prompt-len", "16:64", "--max-tokens", "none", "--rate", "2"))
    assert (config.mode, config.prompts, config.prompts_source) == ("generate", ("tell me a story",), str(prompts))
    assert (config.prompt_len, config.max_tokens, config.rates) == ("16:64", None, (2.0,))
    defaults = cli.config_from_args(parse("--model", "lm", "--mode", "generate"))
    assert (defaults.prompt_len, defaults.max_tokens, defaults.prompts) == (128, 128, ())


def test_generate_mode_refuses_what_it_does_not_support_yet():
    from engineforge.loadtest.generate_cli import run_generate

    args = parse("--model", "lm", "--mode", "generate", "--slo", "p99<50ms")
    with pytest.raises(UsageError, match="--slo"):
        run_generate(args, cli.config_from_args(args))
    assert cli.main(["--model", "a,b", "--mode", "generate"]) == 2


def test_generator_processes_start_at_different_places_in_the_plan():
    from engineforge.loadtest.generate_requests import build_generate_fn

    config = LoadTestConfig(model="lm", mode="generate", prompt_len="4-40", max_tokens=16)
    offsets = [build_generate_fn(config, None, worker=k).plan_offset for k in range(4)]
    assert offsets[0] == 0 and len(set(offsets)) == 4
