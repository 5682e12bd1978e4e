"""Safe defaults for a served repository: the control key that restricts administrative APIs, TLS for gRPC, and
a server that dies with its supervisor; and the one gRPC channel constructor every client uses (`GrpcChannel`).

Model control (load/unload), the repository index, shared memory, tracing and logging settings are restricted
to callers that send the control key header; health, metadata, model config, statistics and inference stay open
(clients read labels from the model config; monitoring reads statistics).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge.errors import ConfigError

CONTROL_KEY_NAME = "engineforge-control-key"
# Triton checks the restricted gRPC protocols for this metadata key (its own prefix + our key name); HTTP
# requests to restricted APIs send CONTROL_KEY_NAME itself as the header.
CONTROL_HEADER = f"triton-grpc-protocol-{CONTROL_KEY_NAME}"
RESTRICTED_PROTOCOLS = "model-repository,shared-memory,trace,logging"
_PR_SET_PDEATHSIG = 1


def new_control_key() -> str:
    return secrets.token_urlsafe(24)


def write_key_file(path: Path, key: str) -> Path:
    """The key, readable by its owner only (administrators pass it to `engineforge rollback` and the like)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return path


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the thread that started it dies (Linux PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for gRPC over TLS. `root_cert` set on the server means clients must present certificates
    signed by it (mutual TLS); clients use it to verify the server."""

    server_cert: Path | None = None
    server_key: Path | None = None
    root_cert: Path | None = None
    mutual: bool = False

    def __post_init__(self) -> None:
        for name in ("server_cert", "server_key", "root_cert"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
                if not Path(value).is_file():
                    raise ConfigError(f"TLS {name.replace('_', ' ')} {value} does not exist; pass a PEM file")
        if self.mutual and self.root_cert is None:
            raise ConfigError("mutual TLS needs a root certificate that signs the client certificates")

    def server_args(self) -> list[str]:
        if self.server_cert is None or self.server_key is None:
            raise ConfigError("serving gRPC over TLS needs --tls-cert and --tls-key (PEM files)")
        args = [f"--grpc-server-cert={self.server_cert}", f"--grpc-server-key={self.server_key}"]
        if self.root_cert is not None:
            args.append(f"--grpc-root-cert={self.root_cert}")
        return args + (["--grpc-use-ssl-mutual=true"] if self.mutual else ["--grpc-use-ssl=true"])


# tritonclient's own defaults: messages up to 2 GiB (large batches of embeddings), and a keepalive ping only after
# two idle minutes with calls in flight: Triton refuses pings more often than every 5 minutes without data
# (--grpc-http2-min-recv-ping-interval-without-data) and closes the connection after 2 such strikes.
MAX_MESSAGE_BYTES = 2**31 - 1
KEEPALIVE_S = 120.0
KEEPALIVE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class ClientTls:
    """What a client needs for gRPC over TLS: the CA that signed the server's certificate (`ca`; None trusts the
    system's roots) and, when the server asks for client certificates (mutual TLS), its own `cert` and `key`."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        for name, flag in (("ca", "--tls-ca"), ("cert", "--tls-cert"), ("key", "--tls-key")):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
                if not Path(value).is_file():
                    raise ConfigError(f"{flag} {value} does not exist; pass a PEM file")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("a client certificate needs its key: pass --tls-cert and --tls-key together")

    @classmethod
    def of(cls, tls: TlsFiles | ClientTls | None) -> ClientTls | None:
        """Client settings from a server's TlsFiles too: trust `root_cert` (the server's own client passes its
        certificate there), and under mutual TLS present the server's certificate, which that CA signed."""
        if tls is None or isinstance(tls, ClientTls):
            return tls
        if tls.mutual and tls.server_cert is not None and tls.server_key is not None:
            return cls(tls.root_cert, tls.server_cert, tls.server_key)
        return cls(tls.root_cert)

    @classmethod
    def from_args(cls, ca: str | None, cert: str | None, key: str | None) -> ClientTls | None:
        """The `--tls-ca/--tls-cert/--tls-key` flags of `infer` and `loadtest`; None when none is given."""
        if ca is None and cert is None and key is None:
            return None
        return cls(ca and Path(ca), cert and Path(cert), key and Path(key))

    def to_dict(self) -> dict[str, str | None]:
        return {"ca": _str(self.ca), "cert": _str(self.cert), "key": _str(self.key)}


@dataclass(frozen=True)
class GrpcChannel:
    """The one way engineforge opens a gRPC connection to Triton (client, `infer`, the load tester, its worker
    processes and its statistics reader): TLS or not, client certificate, message sizes and keepalive."""

    url: str
    tls: ClientTls | None = None
    max_message_bytes: int = MAX_MESSAGE_BYTES
    keepalive_s: float = KEEPALIVE_S
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S

    @property
    def secure(self) -> bool:
        return self.tls is not None

    def options(self) -> list[tuple[str, int]]:
        """gRPC channel arguments (tritonclient ignores its keepalive options once channel arguments are given)."""
        return [("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.keepalive_time_ms", int(self.keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
                ("grpc.keepalive_permit_without_calls", 0),
                ("grpc.http2.max_pings_without_data", 2)]

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"channel_args": self.options()}
        if self.tls is not None:  # tritonclient reads the PEM files itself
            kwargs |= {"ssl": True, "root_certificates": _str(self.tls.ca), "private_key": _str(self.tls.key),
                       "certificate_chain": _str(self.tls.cert)}
        return kwargs

    def client(self) -> Any:
        """A blocking tritonclient gRPC client (connects lazily)."""
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url, **self._kwargs())

    def aio_client(self) -> Any:
        """An asyncio tritonclient gRPC client; create it inside the event loop that will use it."""
        import tritonclient.grpc.aio as grpcclient

        return grpcclient.InferenceServerClient(self.url, **self._kwargs())


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def grpc_client(url: str, tls: TlsFiles | ClientTls | None = None, *, aio: bool = False, **channel: Any) -> Any:
    """A tritonclient gRPC client through GrpcChannel; over TLS it verifies the server with the CA given (or the
    system roots). `channel`: GrpcChannel's message-size and keepalive settings."""
    settings = GrpcChannel(url, ClientTls.of(tls), **channel)
    return settings.aio_client() if aio else settings.client()


def speaks_tls(url: str, timeout_s: float = 2.0) -> bool:
    """Does the server at `url` complete a TLS handshake? (Certificates unchecked: this only tells a TLS port from
    a plaintext one, after a plaintext client saw its connection closed.)"""
    import socket
    import ssl

    host, _, port = url.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return True
    except (OSError, ValueError):  # ssl.SSLError is an OSError: a plaintext server answers garbage or hangs up
        return False


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """Client TLS flags, shared by `infer` and `loadtest` (ClientTls.from_args reads them)."""
    parser.add_argument("--tls-ca", default=None, metavar="PEM",
                        help="connect over TLS, verifying the server's certificate with this CA")
    parser.add_argument("--tls-cert", default=None, metavar="PEM",
                        help="client certificate, for a server that asks for one (mutual TLS); with --tls-key")
    parser.add_argument("--tls-key", default=None, metavar="PEM", help="private key of --tls-cert")
