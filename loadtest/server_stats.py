"""Where the time goes inside Triton: its statistics API, read at the start and the end of each measurement
window and differenced, for the model under test and every model an ensemble runs.

Per model and window: successful requests, mean queue / compute-input / compute-infer / compute-output time per
request (ms), and the achieved batch size (inferences / executions), so a report shows whether dynamic batching
works and which model is the bottleneck. `breakdown` is a pure function of two snapshots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engineforge.grpc_channel import GrpcChannel

STAGES = ("queue", "compute_input", "compute_infer", "compute_output")
Snapshot = dict[str, dict[str, int]]


def _counts(model_stats: Mapping[str, Any]) -> dict[str, int]:
    inference = model_stats.get("inference_stats", {})
    out = {"success": int(inference.get("success", {}).get("count", 0)),
           "inference_count": int(model_stats.get("inference_count", 0)),
           "execution_count": int(model_stats.get("execution_count", 0))}
    out |= {f"{stage}_ns": int(inference.get(stage, {}).get("ns", 0)) for stage in STAGES}
    return out


def parse_statistics(response: Mapping[str, Any]) -> Snapshot:
    """{model: counters} from Triton's statistics JSON (`get_inference_statistics(as_json=True)`), summed over
    versions."""
    snapshot: Snapshot = {}
    for entry in response.get("model_stats", []):
        counts = _counts(entry)
        total = snapshot.setdefault(entry["name"], dict.fromkeys(counts, 0))
        for key, value in counts.items():
            total[key] += value
    return snapshot


def breakdown(before: Snapshot, after: Snapshot, models: Sequence[str]) -> list[dict[str, Any]]:
    """Per model, what happened between the two snapshots (pure)."""
    rows = []
    for model in models:
        a, b = after.get(model), before.get(model, {})
        if a is None:
            continue
        delta = {key: a[key] - b.get(key, 0) for key in a}
        requests = delta["success"]
        row: dict[str, Any] = {"model": model, "requests": requests, "executions": delta["execution_count"],
                               "avg_batch": round(delta["inference_count"] / delta["execution_count"], 3)
                               if delta["execution_count"] else None}
        for stage in STAGES:
            row[f"{stage}_ms"] = round(delta[f"{stage}_ns"] / requests / 1e6, 4) if requests else None
        rows.append(row)
    return rows


def ensemble_members(config: Mapping[str, Any]) -> list[str]:
    """The models an ensemble config (Triton model-config JSON) runs, in step order; [] for other models."""
    steps = config.get("ensemble_scheduling", {}).get("step", [])
    return [step["model_name"] for step in steps]


class StatsProbe:
    """Reads Triton's statistics for `model` and its ensemble members through a gRPC asyncio client."""

    def __init__(self, client: Any, model: str, members: Sequence[str]) -> None:
        self.client, self.models = client, [model, *members]

    @classmethod
    async def open(cls, channel: GrpcChannel | str, model: str) -> StatsProbe | None:
        """A probe, or None when the server will not give statistics (the load test goes on without)."""
        from engineforge.grpc_channel import GrpcChannel

        client = (channel if isinstance(channel, GrpcChannel) else GrpcChannel(channel)).aio_client()
        try:
            config = (await client.get_model_config(model, as_json=True)).get("config", {})
            probe = cls(client, model, ensemble_members(config))
            await probe.snapshot()
            return probe
        except Exception:
            await client.close()
            return None

    async def snapshot(self) -> Snapshot:
        merged: Snapshot = {}
        for model in self.models:
            merged |= parse_statistics(await self.client.get_inference_statistics(model, as_json=True))
        return merged

    async def close(self) -> None:
        await self.client.close()


async def window_breakdown(probe: StatsProbe | None, window_start: float, window_end: float) -> list | None:
    """Snapshots at `window_start` and `window_end` (clock() times), run beside the load; None without a probe
    or when the server stops answering statistics."""
    import asyncio

    from .records import clock

    if probe is None:
        return None
    try:
        await asyncio.sleep(max(window_start - clock(), 0.0))
        before = await probe.snapshot()
        await asyncio.sleep(max(window_end - clock(), 0.0))
        return breakdown(before, await probe.snapshot(), probe.models)
    except asyncio.CancelledError:
        raise
    except Exception:
        return None
