"""Which model `engineforge infer` asks when no --model is given: the only one the server serves.

`engineforge serve` restricts the repository index to holders of the control key, so the names come from what
any client may read: the repository the server serves (`--repo`, default model_repo: the models published in it
and those a running `engineforge serve` lists in its status file), each asked for readiness (a public call). A
server whose index is open (a plain tritonserver) is listed directly when the repository names none it serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.errors import UsageError
from engineforge.grpc_errors import PermissionDeniedError

from .model_layout import ENGINE_SUFFIX, parse_version_model
from .serving_status import read_status
from .version_switch import published_models


def repository_models(repo: Path) -> list[str]:
    """Published names in `repo`, with the ones its running supervisor reports serving (none if it is missing)."""
    names: set[str] = set()
    status = read_status(repo)
    if status is not None:
        names.update(status.get("models") or {})
    if repo.is_dir():
        names.update(published_models(repo))
    return sorted(names)


def index_models(client: Any) -> list[str]:
    """The text entry points among the server's READY models (needs an open index or the control key)."""
    ready = set(client.ready_models())
    return sorted(n for n in ready if parse_version_model(n) is None
                  and not (n.endswith(ENGINE_SUFFIX) and n.removesuffix(ENGINE_SUFFIX) in ready))


def pick_model(client: Any, repo: Path) -> str:
    """The one model served at `client.url`; UsageError listing them when there are several, or saying how to
    name one when none can be found."""
    names = repository_models(repo)
    served = [name for name in names if client.model_ready(name)]
    if not served:
        try:
            served = index_models(client)
        except PermissionDeniedError:
            pass  # the usual case under `engineforge serve`: said in the error below
    if len(served) == 1:
        progress.info(f"model {served[0]!r}: the only one served at {client.url} (--model picks another)")
        return served[0]
    if served:
        raise UsageError(f"{len(served)} models are served at {client.url}: {', '.join(served)}; pick one with "
                         "--model NAME")
    if names:
        raise UsageError(f"no --model given, and none of the models in {repo} ({', '.join(names)}) is ready at "
                         f"{client.url}; pass --model NAME, or --repo with the repository that server serves")
    raise UsageError(f"no --model given, and the models served at {client.url} cannot be listed here: {repo} holds "
                     "no published model and the server's model index needs the control key; pass --model NAME, "
                     "or --repo with the repository that server serves")
