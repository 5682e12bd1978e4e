"""What every engineforge command does with a failure: one line on stderr, no traceback, one exit code.

The one exit-code rule (`exit_code`), for every command including `engineforge serve`: 0 done; 1 the command ran
and failed (typed EngineforgeError, or anything unexpected); 2 usage error (UsageError: the command line itself is
wrong; argparse uses 2 as well); 130 interrupted (Ctrl-C, or SIGTERM where a command turns it into the same clean
stop, as `engineforge serve` does after draining).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from engineforge.errors import ConfigError, EngineforgeError, UsageError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEBUG_ENV = "ENGINEFORGE_DEBUG"  # 1: print the traceback after the one-line error (`--debug` sets it)


def enable_debug() -> None:
    os.environ[DEBUG_ENV] = "1"


def _debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def exit_code(outcome: BaseException | None = None) -> int:
    """The exit code of a command that ended with `outcome`: None (done) 0, UsageError 2, KeyboardInterrupt
    (Ctrl-C, SIGTERM) 130, any other exception 1."""
    if outcome is None:
        return EXIT_OK
    if isinstance(outcome, UsageError):
        return EXIT_USAGE
    if isinstance(outcome, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


def run_command(prog: str, command: Callable[[], int | None]) -> int:
    """Run `command`; typed errors and Ctrl-C become one stderr line and their exit code."""
    try:
        return int(command() or exit_code())
    except EngineforgeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        if _debugging():
            traceback.print_exc()
        return exit_code(exc)
    except KeyboardInterrupt as exc:
        print(f"{prog}: interrupted", file=sys.stderr)
        return exit_code(exc)
    except Exception as exc:  # not a typed error: still one line, with what to do; the traceback on request
        print(f"{prog}: error: unexpected {type(exc).__name__}: {exc}. Rerun with --debug (or {DEBUG_ENV}=1) "
              "for the traceback and report it", file=sys.stderr)
        if _debugging():
            traceback.print_exc()
        return exit_code(exc)


@contextmanager
def arguments_checked() -> Iterator[None]:
    """Around turning command-line arguments into a config: an invalid value there is a usage error."""
    try:
        yield
    except UsageError:
        raise
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
