"""Before any load: is the server there, over the right transport (TLS or not), and is the model ready? Fails early
with one clear error instead of a level full of failed requests."""

from __future__ import annotations

from typing import Any

import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from engineforge import grpc_errors
from engineforge.errors import ModelNotReadyError, ServerUnavailableError
from engineforge.grpc_channel import GrpcChannel


async def check_server(url: str | GrpcChannel, model: str, *, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """Fail early and clearly if nobody serves `model` at `url`; return the model's metadata
    (KServe v2 JSON: name, inputs, outputs), or None if the server would not give it.

    Raises ServerUnavailableError when no server answers (saying so when the server speaks TLS and the client
    does not, or the reverse), ModelNotReadyError (listing the models that are ready) when the server is up but
    `model` is missing or not ready.
    """
    channel = url if isinstance(url, GrpcChannel) else GrpcChannel(url)
    url = channel.url
    async with channel.aio_client() as client:
        try:
            live = await client.is_server_live(client_timeout=timeout_s)
        except InferenceServerException as exc:
            raise grpc_errors.to_error(exc, url, tls=channel.secure) from None
        if not live:
            raise ServerUnavailableError(f"the Triton server at {url} reports it is not live")
        try:
            ready = await client.is_model_ready(model, client_timeout=timeout_s)
        except InferenceServerException:
            ready = False
        if not ready:
            raise ModelNotReadyError(await _not_ready_message(client, url, model, timeout_s))
        try:
            metadata = await client.get_model_metadata(model, as_json=True, client_timeout=timeout_s)
            config = await client.get_model_config(model, as_json=True, client_timeout=timeout_s)
            server = await client.get_server_metadata(as_json=True, client_timeout=timeout_s)
        except InferenceServerException:  # only used to check inputs and for the report; the load test can go on
            return None
        parameters = config.get("config", {}).get("parameters", {})
        return metadata | {"parameters": {k: v.get("string_value", "") for k, v in parameters.items()},
                           "server": {"name": server.get("name"), "version": server.get("version")}}


async def _not_ready_message(client: grpcclient.InferenceServerClient, url: str, model: str, timeout_s: float) -> str:
    try:
        index = await client.get_model_repository_index(as_json=True, client_timeout=timeout_s)
        entries = index.get("models", [])
    except InferenceServerException as exc:
        if grpc_errors.kind_of(exc) == grpc_errors.FORBIDDEN:  # `engineforge serve` restricts the index
            return grpc_errors.model_not_ready(model, url, "is not ready", "cannot be listed (the repository index "
                                               "needs the control key)")
        entries = []
    ready = sorted({m["name"] for m in entries if m.get("state") == "READY"})
    own = [m for m in entries if m.get("name") == model]
    if own:
        state = own[0].get("state", "UNKNOWN")
        reason = own[0].get("reason")
        why = f"is in state {state}" + (f" ({reason})" if reason else "")
    else:
        why = "is not in the server's model repository"
    return grpc_errors.model_not_ready(model, url, why, ", ".join(ready) if ready else "none")
