"""Safe defaults for a served repository: the control key that restricts administrative APIs, TLS for gRPC, and
a server that dies with its supervisor.

Model control (load/unload), the repository index, shared memory, tracing and logging settings are restricted
to callers that send the control key header; health, metadata, model config, statistics and inference stay open
(clients read labels from the model config; monitoring reads statistics).
"""

from __future__ import annotations

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


def grpc_client(url: str, tls: TlsFiles | None = None) -> Any:
    """A tritonclient gRPC client; over TLS it verifies the server with `tls.root_cert` (or the system roots)."""
    import tritonclient.grpc as grpcclient

    if tls is None:
        return grpcclient.InferenceServerClient(url)
    return grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(tls.root_cert or "") or None)
