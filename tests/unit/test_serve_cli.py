"""CLI parsing and output helpers, and client errors that need no server."""

from __future__ import annotations

import argparse

import pytest

from engineforge.errors import ServerUnavailableError, UsageError
from engineforge.serve import cli, repository
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
    assert infer.func is cli.run_infer and infer.model == repository.DEFAULT_MODEL_NAME
    assert infer.url == "127.0.0.1:8001" and infer.texts == ["hello"]


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
