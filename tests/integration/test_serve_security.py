"""Safe serving defaults against a real tritonserver: model control needs the control key, gRPC over TLS with the
client verifying the server (`infer` and `loadtest` included, mutual TLS too, and a plaintext client is told the
port speaks TLS), and an engine file changed after publishing is refused at load."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from engineforge.errors import ServerError, ServerUnavailableError
from engineforge.grpc_channel import CONTROL_HEADER, TlsFiles
from engineforge.loadtest import cli as loadtest_cli
from engineforge.serve import cli as serve_cli
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import TritonServer, find_triton
from tests.helpers.echo_models import write_repo
from tests.helpers.tiny_engine import TINY_LABELS, tiny_bundle  # noqa: F401

pytestmark = pytest.mark.triton

MODEL = "clf"


@pytest.fixture(scope="module")
def repo(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    find_triton()
    repo = tmp_path_factory.mktemp("security") / "repo"
    publish_engine(tiny_bundle, repo, MODEL, max_batch_size=4)
    return repo


def _readable(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone, or not ours to read
        return b""


def test_model_control_needs_the_control_key_which_no_process_shows(repo: Path, tmp_path: Path):
    key = "s3cret-key-that-must-not-show"
    with TritonServer(repo, model_control_mode="explicit", load_models=(MODEL,), control_key=key,
                      log_file=tmp_path / "triton.log") as server:
        # Every local user can read any process's arguments (ps -eo args): the key is in none of them, nor in any
        # environment (those are owner-only, but are checked too); tritonserver holds a placeholder instead.
        procs = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
        assert not [p.name for p in procs if key.encode() in _readable(p / "cmdline")], "the key is in a command line"
        assert not [p.name for p in procs if key.encode() in _readable(p / "environ")], "the key is in an environment"
        assert b"@ENGINEFORGE_CONTROL_KEY@" in Path(f"/proc/{server.pid}/cmdline").read_bytes()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            for call in (lambda h: client.unload_model("clf.v1.engine", headers=h),
                         lambda h: client.get_model_repository_index(headers=h)):
                with pytest.raises(InferenceServerException, match="restricted"):
                    call(None)
                with pytest.raises(InferenceServerException, match="restricted"):
                    call({CONTROL_HEADER: "wrong"})
                with pytest.raises(InferenceServerException, match="restricted"):  # the placeholder is no key either
                    call({CONTROL_HEADER: "@ENGINEFORGE_CONTROL_KEY@"})
            assert client.is_model_ready("clf.v1.engine")  # nothing was unloaded
            index = client.get_model_repository_index(headers={CONTROL_HEADER: key})
            assert {m.name for m in index.models} >= {MODEL, f"{MODEL}_engine", "clf.v1.engine"}
            with EngineforgeClient(server.grpc_url) as public:  # inference and model config stay open
                assert public.classify(["where is my order?"], model=MODEL)[0].label in TINY_LABELS
        finally:
            client.close()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "server.pem", directory / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_grpc_over_tls(repo: Path, tmp_path: Path):
    cert, key = _self_signed(tmp_path)
    tls = TlsFiles(server_cert=cert, server_key=key)
    with TritonServer(repo, tls=tls, log_file=tmp_path / "triton.log") as server:
        with EngineforgeClient(server.grpc_url, tls=TlsFiles(root_cert=cert)) as client:
            assert client.classify(["refund please"], model=MODEL)[0].label in TINY_LABELS
        with EngineforgeClient(server.grpc_url, retry=False, timeout_s=5) as plaintext, \
                pytest.raises(ServerUnavailableError, match=f"the server at {server.grpc_url} speaks TLS"):
            plaintext.classify(["refund please"], model=MODEL)


def test_tls_settings_are_checked(tmp_path: Path):
    from engineforge.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        TlsFiles(server_cert=tmp_path / "missing.pem", server_key=tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="mutual TLS needs a root certificate"):
        TlsFiles(mutual=True)


def test_an_engine_changed_after_publishing_is_refused(tiny_bundle: Path, tmp_path: Path):  # noqa: F811
    repo = tmp_path / "repo"
    publish_engine(tiny_bundle, repo, MODEL, max_batch_size=4)
    engine = repo / "clf.v1.engine" / "1" / "model.onnx"
    raw = bytearray(engine.read_bytes())
    raw[-100] ^= 0x01  # one flipped bit in a weight
    engine.write_bytes(bytes(raw))
    with pytest.raises(ServerError, match=r"differs from the published .* so it is refused"):
        TritonServer(repo, log_file=tmp_path / "triton.log", startup_timeout_s=60).start()


def test_the_default_interface_is_loopback(repo: Path):
    server = TritonServer(repo)
    command = " ".join(server.command(find_triton(), Path("/nonexistent")))
    assert "--grpc-address=127.0.0.1" in command and "--http-address=127.0.0.1" in command
    assert "--metrics-address=127.0.0.1" in command and server.grpc_url.startswith("127.0.0.1:")
    assert np.isfinite(server.grpc_port)


def _signed_by_ca(directory: Path) -> dict[str, Path]:
    """A CA, and a server and a client certificate it signed (for 127.0.0.1 and localhost)."""
    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, cwd=directory)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca", "-keyout",
        "ca.key", "-out", "ca.pem")
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.ext", "-out", f"{name}.pem")
    return {name: directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def _infer(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    serve_cli.add_parsers(parser.add_subparsers())
    return serve_cli.run_infer(parser.parse_args(["infer", "--model", "echo_text", "--timeout", "10", *argv]))


@pytest.fixture(scope="module")
def echo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    find_triton()
    return write_repo(tmp_path_factory.mktemp("tls") / "repo", ("echo_text",))


def test_infer_and_the_load_test_speak_tls_and_a_plaintext_client_is_told_the_port_does(echo_repo: Path,
                                                                                       tmp_path: Path, capsys):
    cert, key = _self_signed(tmp_path)
    with TritonServer(echo_repo, tls=TlsFiles(server_cert=cert, server_key=key),
                      log_file=tmp_path / "triton.log") as server:
        url = server.grpc_url
        assert _infer("--url", url, "--tls-ca", str(cert), "where is my parcel?") == 0
        assert "where is my parcel?  positive" in capsys.readouterr().out
        assert _infer("--url", url, "where is my parcel?") == 1
        err = capsys.readouterr().err
        assert f"the server at {url} speaks TLS, and this client connected without it: pass --tls-ca" in err
        assert "no Triton server answers" not in err
        # the load test: its request functions, two worker processes and the statistics reader, all over TLS
        base = ["--url", url, "--model", "echo_text", "--duration", "1", "--warmup", "0.2", "--no-plot",
                "--out", str(tmp_path), "--progress-every", "0"]
        assert loadtest_cli.main([*base, "--tls-ca", str(cert), "--rate", "40", "--workers", "2", "--name", "tls"]) \
            == 0, capsys.readouterr().err
        report = json.loads((tmp_path / "tls.json").read_text())
        level = report["levels"][0]
        assert report["settings"]["tls"]["ca"] == str(cert) and level["workers"] == 2
        assert level["metrics"]["errors"] == 0 and level["metrics"]["completed"] > 0
        assert level["server"][0]["model"] == "echo_text" and level["server"][0]["requests"] > 0
        capsys.readouterr()
        assert loadtest_cli.main([*base, "--concurrency", "1", "--name", "plain"]) == 1
        assert f"the server at {url} speaks TLS" in capsys.readouterr().err


def test_mutual_tls_needs_the_client_certificate(echo_repo: Path, tmp_path: Path, capsys):
    pem = _signed_by_ca(tmp_path)
    tls = TlsFiles(pem["server.pem"], pem["server.key"], pem["ca.pem"], mutual=True)
    with TritonServer(echo_repo, tls=tls, log_file=tmp_path / "triton.log") as server:
        url, client = server.grpc_url, ["--tls-cert", str(pem["client.pem"]), "--tls-key", str(pem["client.key"])]
        assert _infer("--url", url, "--tls-ca", str(pem["ca.pem"]), *client, "refund please") == 0
        assert "refund please" in capsys.readouterr().out
        assert _infer("--url", url, "--tls-ca", str(pem["ca.pem"]), "refund please") == 1
        assert "asks for a client certificate signed by the CA it trusts (--tls-cert/--tls-key)" in \
            capsys.readouterr().err
        assert loadtest_cli.main(["--url", url, "--model", "echo_text", "--concurrency", "1", "--duration", "0.5",
                                  "--warmup", "0", "--no-plot", "--out", str(tmp_path), "--name", "mtls",
                                  "--tls-ca", str(pem["ca.pem"]), *client]) == 0, capsys.readouterr().err
        assert json.loads((tmp_path / "mtls.json").read_text())["levels"][0]["metrics"]["errors"] == 0
