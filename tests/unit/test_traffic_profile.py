"""engines/traffic.py and build/traffic_profile.py: a build's texts become one TrafficProfile (token lengths, their
source, the batcher's batch sizes) that runtimes are timed on, with lengths changing call to call."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from engineforge.build.config import BuildConfig
from engineforge.build.steps import ExportConfig, PublishConfig, SelectRuntimeConfig
from engineforge.build.traffic_profile import build_traffic_profile, profile_batch_sizes
from engineforge.data import Example
from engineforge.engines.traffic import (
    SAMPLE_SIZE,
    TrafficProfile,
    bucket_for,
    check_length_buckets,
    profile_from_texts,
)
from engineforge.errors import ConfigError


def words(texts: list[str], truncation: bool, max_length: int) -> dict[str, list[list[int]]]:
    """A tokenizer stand-in: [CLS] + one id per word + [SEP], truncated as the real one is."""
    assert truncation
    return {"input_ids": [([101] + [7] * len(t.split()) + [102])[:max_length] for t in texts]}


def test_a_profile_holds_the_token_lengths_of_the_texts_special_tokens_in_and_truncated():
    profile = profile_from_texts(words, ["hi", "where is my order", "a " * 50], 16, "eval data e.jsonl")
    assert profile.lengths == (3, 6, 16) and profile.count == 3 and profile.max_sequence_length == 16
    summary = profile.summary()
    assert (summary["texts"], summary["p50"], summary["max"], summary["mean"]) == (3, 6.0, 16, 8.3)
    assert profile.describe().startswith("3 texts from eval data e.jsonl: tokens mean 8.3, p50 6")


def test_a_long_list_is_sampled_evenly_and_its_count_kept():
    texts = [" ".join(["w"] * (1 + i % 20)) for i in range(SAMPLE_SIZE * 3)]
    profile = profile_from_texts(words, texts, 64, "traffic")
    assert len(profile.lengths) == SAMPLE_SIZE and profile.count == SAMPLE_SIZE * 3
    assert set(profile.lengths) == set(range(3, 23))  # every length of the texts is still represented


def test_draw_changes_length_from_one_call_to_the_next_and_is_deterministic():
    profile = TrafficProfile("eval", lengths=(10, 10, 10, 10, 12, 30), max_sequence_length=128)
    drawn = profile.draw(200, seed=3)
    assert len(drawn) == 200 and set(drawn) <= {10, 12, 30}
    assert all(a != b for a, b in itertools.pairwise(drawn))
    assert drawn == profile.draw(200, seed=3) and drawn != profile.draw(200, seed=4)
    assert TrafficProfile("one", lengths=(7,), max_sequence_length=8).draw(3) == [7, 7, 7]  # nothing to change to


def test_to_dict_and_from_dict_round_trip():
    profile = TrafficProfile("traffic data /x/requests.jsonl", (5, 9, 40), 64, count=3000, batch_sizes=(1, 2))
    data = profile.to_dict()
    assert data["summary"]["texts"] == 3000 and data["batch_sizes"] == [1, 2]
    assert TrafficProfile.from_dict(data) == profile


@pytest.mark.parametrize(("kwargs", "fix"), [
    ({"lengths": ()}, "--traffic-data"),
    ({"lengths": (0, 5)}, r"lengths must be in \[1, 128\]"),
    ({"lengths": (5, 300)}, r"lengths must be in \[1, 128\]"),
    ({"lengths": (5,), "batch_sizes": (0,)}, r"give sizes >= 1, e\.g\. \[1, 4\]"),
])
def test_invalid_profiles_are_refused_with_the_fix(kwargs, fix):
    with pytest.raises(ConfigError, match=fix):
        TrafficProfile(**{"source": "eval", "max_sequence_length": 128, **kwargs})


def test_an_unreadable_profile_says_rebuild():
    with pytest.raises(ConfigError, match="rebuild the engine"):
        TrafficProfile.from_dict({"source": "eval", "max_sequence_length": 128})


def test_length_bucket_helpers():
    assert check_length_buckets([16, 32, 128], 128) == "" and check_length_buckets([], 128) == ""
    assert "strictly increasing" in check_length_buckets([32, 16, 128], 128)
    assert "must end at max_sequence_length (128)" in check_length_buckets([16, 64], 128)
    assert ">= 1" in check_length_buckets([0, 128], 128)
    assert [bucket_for(n, (16, 32, 128)) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    assert bucket_for(20, ()) == 20 and bucket_for(200, (16, 128)) == 200


def _config(tmp_path: Path, **data: Path) -> BuildConfig:
    return BuildConfig(checkpoint=tmp_path, output_dir=tmp_path / "out", steps=(ExportConfig(),), **data)


def test_the_build_profiles_traffic_data_first_then_eval_calibration_train(tmp_path):
    rows = {kind: [Example(text="a " * n) for n in lengths]
            for kind, lengths in (("traffic", (1, 2)), ("eval", (3,)), ("calibration", (4,)), ("train", (5,)))}
    paths = {f"{kind}_data": tmp_path / f"{kind}.jsonl" for kind in rows}
    config = _config(tmp_path, **paths)
    profile = build_traffic_profile(config, words, rows)
    assert profile is not None and profile.lengths == (3, 4)
    assert profile.source == f"traffic data {paths['traffic_data']}"
    for dropped, expected, source in (("traffic", (5,), "eval"), ("eval", (6,), "calibration"),
                                      ("calibration", (7,), "train")):
        del rows[dropped]
        profile = build_traffic_profile(config, words, rows)
        assert profile is not None and profile.lengths == expected
        assert profile.source == f"{source} data {paths[f'{source}_data']}"
    assert build_traffic_profile(config, words, {}) is None


def test_batch_sizes_are_1_and_the_load_test_batch_capped_by_publish(tmp_path):
    assert profile_batch_sizes(_config(tmp_path)) == (1, 4)
    capped = BuildConfig(checkpoint=tmp_path, output_dir=tmp_path, steps=(ExportConfig(),
                                                                          PublishConfig(max_batch_size=2)))
    assert profile_batch_sizes(capped) == (1, 2)
    single = BuildConfig(checkpoint=tmp_path, output_dir=tmp_path, steps=(ExportConfig(),
                                                                          PublishConfig(max_batch_size=1)))
    assert profile_batch_sizes(single) == (1,)


def test_select_runtime_ranks_on_the_profile_by_default_and_old_options_still_load():
    assert SelectRuntimeConfig().rank_on == "profile"
    legacy = SelectRuntimeConfig.from_dict({"batch": 1, "seq_len": 64, "iterations": 20})
    assert (legacy.seq_len, legacy.rank_on) == (64, "profile")
    assert SelectRuntimeConfig(rank_on="fixed").rank_on == "fixed"
    with pytest.raises(ConfigError, match=r"use 'profile'.*or 'fixed'"):
        SelectRuntimeConfig(rank_on="p99")


def test_recipes_take_traffic_data_relative_to_the_recipe_file(tmp_path):
    from engineforge.build.presets import load_recipe

    recipe = tmp_path / "build.toml"
    recipe.write_text('preset = "int8"\ntraffic_data = "data/requests.jsonl"\n')
    assert load_recipe(recipe)["traffic_data"] == (tmp_path / "data" / "requests.jsonl").resolve()
