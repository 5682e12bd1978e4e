"""`engineforge serve` in the foreground: Triton under the supervisor until Ctrl-C or SIGTERM, which drain it."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from engineforge import progress
from engineforge.cli_support import exit_code
from engineforge.errors import ServerError
from engineforge.grpc_channel import CONTROL_HEADER, new_control_key, write_key_file

from .server import TritonServer
from .supervisor import Supervisor
from .version_switch import served_models


def serve_forever(repo: str | os.PathLike[str], *, key_file: str | os.PathLike[str] | None = None,
                  drain_timeout_s: float = 30.0, **server_options: object) -> int:
    """Run Triton under the supervisor in the foreground until Ctrl-C or SIGTERM; returns the exit code of every
    interrupted engineforge command, 130 (cli_support.exit_code), once the server has drained and stopped.

    The entry points of every published model (or of `load_models` only) are loaded with explicit model control, so
    the supervisor can repair, switch versions and report; model control needs the control key (written to
    `key_file`, owner-only; it never appears on any command line). On SIGTERM or Ctrl-C the server drains for up
    to `drain_timeout_s`. Raises ServerError if the server cannot be started.
    """
    key = server_options.pop("control_key", None) or new_control_key()
    options = dict(server_options, model_control_mode="explicit", control_key=key, die_with_parent=True,
                   supervised=True, drain_timeout_s=drain_timeout_s)
    first = TritonServer(repo, **options)  # type: ignore[arg-type]
    # Fixed ports from here on: a restarted server answers where clients already connect.
    options.update(grpc_port=first.grpc_port, http_port=first.http_port, metrics_port=first.metrics_port)
    only = tuple(options.pop("load_models", ()) or ())  # type: ignore[call-overload]

    def make_server() -> TritonServer:
        models = served_models(Path(repo), only)
        if not models:
            raise ServerError(f"model repository {repo} holds no models"
                              + (f" named {list(only)}" if only else "") + "; publish one with build-engine first")
        return TritonServer(repo, **(options | {"load_models": tuple(models)}))  # type: ignore[arg-type]

    supervisor = Supervisor(make_server, only=only, drain_s=drain_timeout_s)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    if main_thread:  # SIGTERM (e.g. from a process manager) takes the same clean path as Ctrl-C
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)}
    try:
        server = supervisor.start()
        supervisor._write_status()
        key_path = write_key_file(Path(key_file) if key_file else server.log_path.parent / "control.key", key)
        progress.info(
            f"Triton serving {server.repo}: gRPC {server.grpc_url}{' (TLS)' if server.tls else ''}, HTTP "
            f"{server.http_url}, metrics {server.metrics_url}; readiness gRPC ServerReady/ModelReady, HTTP "
            f"/v2/health/ready, /v2/models/NAME/ready; liveness /v2/health/live; log {server.log_path}; model "
            f"control needs header {CONTROL_HEADER} (key in {key_path}). Ctrl-C or SIGTERM drains and stops it."
        )
        supervisor.run()
        return exit_code()
    except KeyboardInterrupt as interrupted:
        return exit_code(interrupted)  # returned once `finally` has drained and stopped the server
    finally:
        server = supervisor.server
        if server is not None and server.is_running():
            if main_thread:  # a second Ctrl-C must not abort the shutdown and orphan the server
                previous.setdefault(signal.SIGINT, signal.signal(signal.SIGINT, signal.SIG_IGN))
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            waiting = server.gate.inflight() if server.gate else 0
            progress.info(f"draining: NOT READY, new requests get UNAVAILABLE; {waiting} accepted request(s) "
                          f"finishing (up to {drain_timeout_s:g}s) ...")
            server.stop()
            progress.info("Triton stopped")
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
