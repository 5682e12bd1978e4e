"""What the supervisor watches in the repository: each model's config on disk, and the model-control actions a
change asks for (a publish or rollback switches a published model's version; an edited model is reloaded)."""

from __future__ import annotations

from pathlib import Path

from .model_layout import ENGINE_SUFFIX, parse_version_model


def config_mtimes(repo: Path | None) -> dict[str, float]:
    """Modification time of each model's config: a publish or rollback writes the entry points' configs last."""
    state = {}
    for model_dir in sorted(p for p in (repo.iterdir() if repo else []) if p.is_dir() and p.name[0] != "."):
        path = model_dir / "config.pbtxt"
        if path.is_file():
            state[model_dir.name] = path.stat().st_mtime
    return state


def actions_for(changed: list[str], published: set[str], serving: dict[str, int]) -> list[tuple[str, str]]:
    """("switch", published model) or ("reload", model) for the models whose configs changed, edited models first:
    an entry point may not take larger batches than what it runs."""
    queued: list[tuple[str, str]] = []
    for name in changed:
        stem = name.removesuffix(ENGINE_SUFFIX)
        owner = stem if stem in published else name
        version_model = parse_version_model(name)
        if owner in published:
            action = ("switch", owner)
        elif version_model is not None:  # a served version's model edited (engineforge tune --apply)
            if serving.get(version_model[0]) != version_model[1]:
                continue  # a version being published: its entry points bring it in
            action = ("reload", name)
        else:
            action = ("reload", name)
        if action not in queued:
            queued.append(action)
    return sorted(queued, key=lambda a: a[0] == "switch")


def ensemble_steps(repo: Path, model: str) -> tuple[str, ...]:
    """The models an ensemble's config on disk runs; () for other models."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        path = repo / model / "config.pbtxt"
        config = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError, AttributeError):
        return ()
    return tuple(step.model_name for step in config.ensemble_scheduling.step)
