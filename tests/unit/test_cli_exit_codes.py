"""Every command ends the same way: one stderr line; exit 2 for a wrong command line, 1 failure, 130 interrupted."""

from __future__ import annotations

import pytest

from engineforge.cli import main as engineforge_main
from engineforge.cli_support import arguments_checked, exit_code, run_command
from engineforge.engines.tensorrt_api import current_gpu
from engineforge.errors import ConfigError, DataError, UsageError


def fail(exc: BaseException):
    def command() -> int:
        raise exc
    return command


def test_run_command_maps_errors_to_exit_codes(capsys):

    assert run_command("tool", lambda: 0) == 0
    assert run_command("tool", fail(UsageError("give X"))) == 2
    assert run_command("tool", fail(DataError("bad file"))) == 1
    assert run_command("tool", fail(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err.splitlines() == ["tool: error: give X", "tool: error: bad file", "tool: interrupted"]
    # An untyped failure (a bug, or a library failing on odd input) is one line with what to do, exit 1...
    assert run_command("tool", fail(RuntimeError("bug"))) == 1
    err = capsys.readouterr().err
    assert err.startswith("tool: error: unexpected RuntimeError: bug. Rerun with --debug") and "Traceback" not in err


def test_debug_prints_the_traceback_after_the_line(capsys, monkeypatch):
    monkeypatch.setenv("ENGINEFORGE_DEBUG", "1")
    assert run_command("tool", fail(RuntimeError("bug"))) == 1
    assert run_command("tool", fail(DataError("bad file"))) == 1
    err = capsys.readouterr().err
    assert err.count("Traceback (most recent call last)") == 2 and "tool: error: bad file" in err


def test_invalid_values_in_arguments_are_usage_errors():
    with pytest.raises(UsageError, match="bad value"), arguments_checked():
        raise ConfigError("bad value")


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--preset", "turbo"], "engineforge demo: error: unknown preset 'turbo'"),
    (["demo", "--concurrency", "0"], "engineforge demo: error: --concurrency"),
    pytest.param(["demo", "--preset", "trt-fp16"], "a trt-fp16 engine runs on an NVIDIA GPU only",
                 marks=pytest.mark.skipif(current_gpu() is not None, reason="this machine has a GPU")),
    (["loadtest", "--model", "m", "--batch-size", "0"], "engineforge loadtest: error: invalid load-test settings"),
    (["infer"], "engineforge infer: error: give either texts or --token-ids"),
    (["build", "--preset", "int8"], "build-engine: error: no checkpoint given"),
])
def test_usage_errors_exit_2_from_every_command(capsys, argv, message):
    assert engineforge_main(argv) == 2
    assert message in capsys.readouterr().err


def test_one_exit_code_rule_for_every_outcome():
    assert [exit_code(), exit_code(UsageError("x")), exit_code(DataError("y")), exit_code(KeyboardInterrupt()),
            exit_code(RuntimeError("bug"))] == [0, 2, 1, 130, 1]


def test_serve_exits_130_after_an_interrupt(monkeypatch, tmp_path):
    """`engineforge serve` stopped by Ctrl-C or SIGTERM (both arrive as KeyboardInterrupt) follows the same rule."""
    from engineforge.serve import serve_command

    class Interrupted:
        server = None

        def __init__(self, *args, **kwargs) -> None:
            pass

        def start(self):
            raise KeyboardInterrupt

    monkeypatch.setattr(serve_command, "Supervisor", Interrupted)
    assert serve_command.serve_forever(tmp_path, grpc_port=0, http_port=0, metrics_port=0) == 130
