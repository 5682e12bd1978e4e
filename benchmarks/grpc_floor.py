"""The least a Python client can spend per request: a bare grpc.aio stub sending one prebuilt KServe request
open loop at a fixed rate, with no records, checks or reports. benchmarks/bench_loadgen.py runs it beside
`engineforge loadtest` and perf_analyzer, so the table separates Python gRPC's own cost from the load generator's.

    .venv/bin/python benchmarks/grpc_floor.py HOST:PORT MODEL RATE SECONDS
"""

from __future__ import annotations

import asyncio
import sys
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

SEQ = 16


def request(model: str) -> service_pb2.ModelInferRequest:
    ids = np.random.default_rng(0).integers(1000, 2000, size=(1, SEQ), dtype=np.int64)
    message = service_pb2.ModelInferRequest(model_name=model)
    for name, arr in (("INPUT_IDS", ids), ("ATTENTION_MASK", np.ones_like(ids))):
        tensor = message.inputs.add()
        tensor.name, tensor.datatype = name, "INT64"
        tensor.shape.extend(arr.shape)
        message.raw_input_contents.append(arr.tobytes())
    message.outputs.add().name = "LOGITS"
    return message


async def main(url: str, model: str, rate: float, seconds: float) -> None:
    async with grpc.aio.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        message = request(model)
        pending = set()
        start = time.perf_counter()
        for k in range(int(rate * seconds)):
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(stub.ModelInfer(message, timeout=10))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
