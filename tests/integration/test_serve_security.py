"""Safe serving defaults against a real tritonserver: model control needs the control key, gRPC over TLS with the
client verifying the server, and an engine file changed after publishing is refused at load."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from engineforge.errors import ServerError, ServerUnavailableError
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.grpc_security import CONTROL_HEADER, TlsFiles
from engineforge.serve.repository import publish_engine
from engineforge.serve.server import TritonServer, find_triton
from tests.helpers.tiny_engine import TINY_LABELS, tiny_bundle  # noqa: F401

pytestmark = pytest.mark.triton

MODEL = "clf"


@pytest.fixture(scope="module")
def repo(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    find_triton()
    repo = tmp_path_factory.mktemp("security") / "repo"
    publish_engine(tiny_bundle, repo, MODEL, max_batch_size=4)
    return repo


def test_model_control_needs_the_control_key(repo: Path, tmp_path: Path):
    with TritonServer(repo, model_control_mode="explicit", load_models=(MODEL,), control_key="s3cret-key",
                      log_file=tmp_path / "triton.log") as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            for call in (lambda h: client.unload_model(f"{MODEL}_engine", headers=h),
                         lambda h: client.get_model_repository_index(headers=h)):
                with pytest.raises(InferenceServerException, match="restricted"):
                    call(None)
                with pytest.raises(InferenceServerException, match="restricted"):
                    call({CONTROL_HEADER: "wrong"})
            assert client.is_model_ready(f"{MODEL}_engine")  # nothing was unloaded
            index = client.get_model_repository_index(headers={CONTROL_HEADER: "s3cret-key"})
            assert {m.name for m in index.models} == {MODEL, f"{MODEL}_engine", f"{MODEL}_tokenizer"}
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
                pytest.raises(ServerUnavailableError):
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
    engine = repo / f"{MODEL}_engine" / "1" / "model.onnx"
    raw = bytearray(engine.read_bytes())
    raw[-100] ^= 0x01  # one flipped bit in a weight
    engine.write_bytes(bytes(raw))
    with pytest.raises(ServerError, match=r"differs from the published .* refusing to load it"):
        TritonServer(repo, log_file=tmp_path / "triton.log", startup_timeout_s=60).start()


def test_the_default_interface_is_loopback(repo: Path):
    server = TritonServer(repo)
    command = " ".join(server.command(find_triton(), Path("/nonexistent")))
    assert "--grpc-address=127.0.0.1" in command and "--http-address=127.0.0.1" in command
    assert "--metrics-address=127.0.0.1" in command and server.grpc_url.startswith("127.0.0.1:")
    assert np.isfinite(server.grpc_port)
