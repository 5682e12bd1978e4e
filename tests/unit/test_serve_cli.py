"""CLI parsing and output helpers, and client errors that need no server."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

import pytest

from engineforge.errors import ServerUnavailableError, UsageError
from engineforge.serve import cli
from engineforge.serve.client import EngineforgeClient, Prediction
from engineforge.serve.server import free_port


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    return parser.parse_args(list(argv))


def test_defaults_match_the_rest_of_serve():
    args = parse("serve")
    assert (args.repo, args.grpc_port, args.http_port, args.metrics_port) == ("model_repo", 8001, 8000, 8002)
    assert args.func is cli.run_serve and args.bind == "127.0.0.1" and args.load_model == []
    infer = parse("infer", "hello")
    # No hard-coded model: without --model, infer asks the only one served (serve/infer_model.py).
    assert infer.func is cli.run_infer and infer.model is None and infer.repo == "model_repo"
    assert infer.url == "127.0.0.1:8001" and infer.texts == ["hello"] and infer.timeout == 10


def test_parse_token_ids_pads_rows():
    ids, mask = cli.parse_token_ids(["101, 2054,102", "101,102"])
    assert ids == [[101, 2054, 102], [101, 102, 0]] and mask == [[1, 1, 1], [1, 1, 0]]
    with pytest.raises(UsageError, match="comma-separated"):
        cli.parse_token_ids(["1,x"])
    with pytest.raises(UsageError, match="holds no ids"):
        cli.parse_token_ids([","])


def test_format_table():
    table = cli.format_table(["hi"], [Prediction("b", {"a": 0.25, "b": 0.75})])
    header, row = table.splitlines()
    assert header.split() == ["input", "label", "a", "b"] and row.split() == ["hi", "b", "0.2500", "0.7500"]


def test_infer_needs_exactly_one_kind_of_input(capsys):
    assert cli.run_infer(parse("infer")) == 2
    assert cli.run_infer(parse("infer", "x", "--token-ids", "1,2")) == 2
    assert "either texts or --token-ids" in capsys.readouterr().err


def test_infer_and_client_against_dead_port(capsys):
    url = f"127.0.0.1:{free_port()}"
    assert cli.run_infer(parse("infer", "--url", url, "--timeout", "2", "hello")) == 1
    assert f"no Triton server answers at {url}" in capsys.readouterr().err
    with EngineforgeClient(url, timeout_s=2) as client:
        with pytest.raises(ServerUnavailableError, match="engineforge serve"):
            client.classify_token_ids([[101, 102]], [[1, 1]])


def test_serve_reports_missing_repository(tmp_path, capsys):
    assert cli.run_serve(parse("serve", "--repo", str(tmp_path / "missing"))) == 1
    assert "does not exist" in capsys.readouterr().err


def test_infer_with_no_server_says_so_at_once_then_fails_with_a_typed_line(tmp_path):
    url = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "engineforge.cli", "infer", "--url", url, "--model", "m",
                                "--timeout", "4", "hello"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    first = process.stderr.readline()
    said = time.monotonic() - started
    rest = process.stderr.read()
    process.wait(timeout=30)
    ended = time.monotonic() - started
    assert first.rstrip("\n") == (f"[engineforge] no server answers at {url} (connection refused); retrying for up "
                                   "to 4s (--timeout); start one with `engineforge serve`")
    assert said < 3 and ended - said > 2  # said before the retries (Python's start-up included), not after them
    assert process.returncode == 1 and process.stdout.read() == ""
    assert re.fullmatch(rf"engineforge infer: error: no Triton server answers at {re.escape(url)} — start it with "
                        r"`engineforge serve` \(connection refused; retried for [0-9.]+s\)\n", rest)


def test_infer_timeout_zero_fails_at_once_without_retrying(capsys):
    url = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert cli.run_infer(parse("infer", "--url", url, "--model", "m", "--timeout", "0", "hello")) == 1
    assert time.monotonic() - started < 1.5
    err = capsys.readouterr().err
    assert "retrying" not in err and err.endswith("(connection refused)\n")
    assert cli.run_infer(parse("infer", "--url", url, "--timeout", "-1", "hello")) == 2


def test_the_client_says_once_that_nothing_answers_and_only_when_it_retries():
    url = f"127.0.0.1:{free_port()}"
    told: list[str] = []
    with EngineforgeClient(url, timeout_s=1.5, log=told.append) as client, pytest.raises(ServerUnavailableError):
        client.labels("m")
    assert told == [f"no server answers at {url} (connection refused); retrying for up to 1.5s (timeout_s); start "
                    "one with `engineforge serve`"]
    told.clear()
    with EngineforgeClient(url, retry=False, log=told.append) as client, pytest.raises(ServerUnavailableError):
        client.labels("m")
    assert told == []
