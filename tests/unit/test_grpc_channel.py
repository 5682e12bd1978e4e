"""The one gRPC channel constructor (TLS, client certificates, message sizes, keepalive), its CLI flags, and how
gRPC failures read: a TLS port met in plaintext, a restricted call without the control key, a model reloading.
No Triton here: a few-line TLS server stands in (the integration tests run the real one)."""

from __future__ import annotations

import argparse
import json
import pickle
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from engineforge import grpc_errors
from engineforge.errors import ConfigError, ModelNotReadyError, ServerUnavailableError
from engineforge.grpc_channel import ClientTls, GrpcChannel, TlsFiles, grpc_client, speaks_tls
from engineforge.loadtest import cli as loadtest_cli
from engineforge.loadtest.records import ERR_RELOADING
from engineforge.loadtest.triton_requests import classify_error
from engineforge.serve import cli
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.client_connection import retryable
from engineforge.serve.server import free_port


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_parsers(parser.add_subparsers())
    return parser.parse_args(list(argv))

RESTRICTED = "This protocol is restricted, expecting header 'triton-grpc-protocol-engineforge-control-key'"
RELOADING = "Request for unknown model: 'intent' has no available versions"


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "server.pem", directory / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_port(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A port that only speaks TLS: it completes handshakes and hangs up (what a plaintext gRPC client sees of
    a TLS Triton port)."""
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (OSError, ssl.SSLError):
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}", cert
    server.close()


def test_client_tls_settings_are_checked_and_travel_to_worker_processes(tmp_path):
    cert, key = self_signed(tmp_path)
    tls = ClientTls(str(cert), cert, key)
    assert tls.ca == cert and pickle.loads(pickle.dumps(tls)) == tls
    assert json.loads(json.dumps(tls.to_dict())) == {"ca": str(cert), "cert": str(cert), "key": str(key)}
    with pytest.raises(ConfigError, match=r"--tls-ca .* does not exist"):
        ClientTls(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key together"):
        ClientTls(cert=cert)
    assert ClientTls.from_args(None, None, None) is None
    # a server's TlsFiles: trust its root; under mutual TLS present the server's own certificate
    assert ClientTls.of(TlsFiles(root_cert=cert)) == ClientTls(cert)
    assert ClientTls.of(TlsFiles(cert, key, cert, mutual=True)) == ClientTls(cert, cert, key)


def test_one_channel_constructor_sets_message_sizes_and_keepalive(tmp_path):
    cert, _ = self_signed(tmp_path)
    channel = GrpcChannel("127.0.0.1:1", ClientTls(cert), max_message_bytes=1 << 20, keepalive_s=60)
    options = dict(channel.options())
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == 1 << 20
    assert options["grpc.keepalive_time_ms"] == 60_000 and options["grpc.keepalive_permit_without_calls"] == 0
    assert channel.secure and channel._kwargs()["root_certificates"] == str(cert)
    client = grpc_client("127.0.0.1:1", TlsFiles(root_cert=cert))  # serve/server.py's call keeps working
    client.close()


def test_cli_tls_flags_reach_infer_and_the_load_test(tmp_path, capsys):
    cert, key = self_signed(tmp_path)
    parser = argparse.ArgumentParser()
    loadtest_cli.configure_parser(parser)
    config = loadtest_cli.config_from_args(parser.parse_args(["--model", "m", "--tls-ca", str(cert), "--tls-cert",
                                                              str(cert), "--tls-key", str(key)]))
    assert config.tls == ClientTls(cert, cert, key) and config.channel().secure
    assert json.loads(json.dumps(config.to_dict()))["tls"]["ca"] == str(cert)
    infer = parse("infer", "hi", "--tls-ca", str(cert), "--tls-cert", str(cert))
    assert (infer.tls_ca, infer.tls_cert, infer.tls_key) == (str(cert), str(cert), None)
    assert cli.run_infer(infer) == 2  # a certificate without its key is a usage error
    assert "--tls-cert and --tls-key together" in capsys.readouterr().err


def test_a_plaintext_client_meeting_a_tls_port_is_told_so_at_once(tls_port, capsys):
    url, _ = tls_port
    assert speaks_tls(url) and not speaks_tls(f"127.0.0.1:{free_port()}")
    with EngineforgeClient(url, timeout_s=20) as client, pytest.raises(ServerUnavailableError) as info:
        client.classify(["hello"], model="m")
    assert f"the server at {url} speaks TLS, and this client connected without it: pass --tls-ca" in str(info.value)
    assert cli.run_infer(parse("infer", "--url", url, "hello")) == 1
    err = capsys.readouterr().err
    assert "speaks TLS" in err and "no Triton server answers" not in err


def test_a_restricted_call_without_the_control_key_is_permission_denied_not_unavailable():
    exc = InferenceServerException(RESTRICTED, status="StatusCode.UNAVAILABLE")
    assert grpc_errors.kind_of(exc) == grpc_errors.FORBIDDEN and not retryable(exc)
    error = grpc_errors.to_error(exc, "host:8001")
    assert isinstance(error, grpc_errors.PermissionDeniedError) and not isinstance(error, ServerUnavailableError)
    assert "control key" in str(error) and "--control-key-file" in str(error) and "no Triton server" not in str(error)


def test_a_reloading_model_is_retried_and_worded_as_a_reload():
    exc = InferenceServerException(RELOADING, status="StatusCode.NOT_FOUND")
    assert grpc_errors.reloading(exc) and retryable(exc)
    assert classify_error(exc) == ERR_RELOADING
    error = grpc_errors.to_error(exc, "host:8001", "intent", ready_models="other", retried_s=10.0)
    assert isinstance(error, ModelNotReadyError)
    assert str(error).startswith("model 'intent' is reloading on Triton at host:8001: no version of it is loaded "
                                 "right now, still after 10s of retries")
    missing = InferenceServerException("Request for unknown model: 'x' is not found", status="StatusCode.NOT_FOUND")
    assert not grpc_errors.reloading(missing) and "is not ready" in str(grpc_errors.to_error(missing, "h:1", "x"))


def test_tls_handshake_failures_are_explained():
    untrusted = InferenceServerException("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
                                         "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
                                         "CERTIFICATE_VERIFY_FAILED: self signed certificate",
                                         status="StatusCode.UNAVAILABLE")
    assert grpc_errors.kind_of(untrusted) == grpc_errors.TLS and not retryable(untrusted)
    assert "not signed by the CA this client trusts: pass the CA" in str(grpc_errors.to_error(untrusted, "h:1",
                                                                                             tls=True))
    plain = InferenceServerException("Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
                                     "WRONG_VERSION_NUMBER", status="StatusCode.UNAVAILABLE")
    assert "does not speak TLS: drop --tls-ca" in str(grpc_errors.to_error(plain, "h:1", tls=True))
