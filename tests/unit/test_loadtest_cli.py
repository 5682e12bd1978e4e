"""The `loadtest` subcommand's argument parsing (running it is covered by the integration tests)."""

from __future__ import annotations

import argparse

import pytest

from engineforge.errors import ConfigError
from engineforge.loadtest import cli
from engineforge.loadtest.config import parse_workers
from engineforge.loadtest.payloads import DEFAULT_TEXTS


def parse(*argv: str) -> argparse.Namespace:
    top = argparse.ArgumentParser(prog="engineforge")
    cli.add_parser(top.add_subparsers(dest="command", required=True))
    return top.parse_args(["loadtest", *argv])


def test_add_parser_registers_subcommand_with_defaults():
    args = parse("--model", "bert_ensemble")
    assert args.func is cli.run
    config = cli.config_from_args(args)
    assert config.model == "bert_ensemble"
    assert config.url == "127.0.0.1:8001"
    assert config.mode == "text"
    assert config.concurrency == (1, 2, 4, 8)
    assert config.texts == DEFAULT_TEXTS and config.texts_source == "built-in"
    assert config.token_type_ids is None
    assert args.out == "reports/loadtest"


def test_all_options_reach_the_config(tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "where is my parcel"}\n')
    args = parse(
        "--model", "engine", "--url", "10.0.0.1:9001", "--mode", "tokens", "--concurrency", "1,4,16",
        "--duration", "2.5", "--warmup", "0.5", "--batch-size", "8", "--timeout", "3", "--texts-file", str(texts),
        "--seq-len", "64", "--no-token-type-ids", "--label", "int8", "--progress-every", "1",
    )  # fmt: skip
    config = cli.config_from_args(args)
    assert config.url == "10.0.0.1:9001" and config.mode == "tokens"
    assert config.concurrency == (1, 4, 16)
    assert (config.duration_s, config.warmup_s, config.batch_size, config.timeout_s) == (2.5, 0.5, 8, 3.0)
    assert config.texts == ("where is my parcel",) and config.texts_source == str(texts)
    assert (config.seq_len, config.token_type_ids, config.label, config.progress_every_s) == (64, False, "int8", 1.0)


@pytest.mark.parametrize("value", ["", "a,b", "1,0", "-2"])
def test_bad_concurrency_is_a_usage_error(value):
    with pytest.raises(SystemExit):
        parse("--model", "m", "--concurrency", value)


def test_invalid_values_raise_config_error():
    with pytest.raises(ConfigError, match="batch size"):
        cli.config_from_args(parse("--model", "m", "--batch-size", "0"))


def test_run_returns_2_with_a_clear_message_on_bad_settings(capsys):
    assert cli.run(parse("--model", "m", "--duration", "0")) == 2  # usage error, as for every command
    assert "engineforge loadtest: error: invalid load-test settings: duration must be > 0 s" in capsys.readouterr().err


def test_workers_take_a_count_or_auto():
    assert parse_workers("auto") == 0 and parse_workers("3") == 3
    for bad in ("0", "-1", "many"):
        with pytest.raises(argparse.ArgumentTypeError, match="process count >= 1 or 'auto'"):
            parse_workers(bad)
