"""Trivial python-backend models for client and load-test tests against a real tritonserver, independent of the
engine build and publishing code:

- echo_text: TEXT (BYTES [1]) -> LABEL (BYTES [1]), PROBABILITIES (FP32 [-1]), like an ensemble; its config carries
  the `labels` and `task` parameters engineforge publishes, so EngineforgeClient and `engineforge infer` use it;
- echo_tokens: INPUT_IDS, ATTENTION_MASK (INT64 [-1]) -> LOGITS (FP32 [2]), like an engine without TOKEN_TYPE_IDS;
- slow_text: echo_text without batching, 20 ms per request on one instance (~45 req/s): a server to overload;
- slow_init: echo_text whose load takes 1.5 s: a reload leaves a window with no version loaded;
- sleepy_batch: echo_text that gathers requests for 300 ms into one execution and takes 1 s per request in it:
  requests in flight for a while, to stop a server under; sleepier: 10 s per request, longer than a short drain.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

TEXT_MODEL_CONFIG = """
name: "echo_text"
backend: "python"
max_batch_size: 8
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [
  { name: "LABEL" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ -1 ] }
]
parameters [
  { key: "labels" value: { string_value: "[\\"negative\\", \\"positive\\"]" } },
  { key: "task" value: { string_value: "text-classification" } }
]
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

TEXT_MODEL_PY = """
import time

import numpy as np
import triton_python_backend_utils as pb_utils

SERVICE_S = 0.0
INIT_S = 0.0


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(INIT_S)
        self.labels = [b"negative", b"positive"]

    def execute(self, requests):
        responses = []
        for request in requests:
            time.sleep(SERVICE_S)
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            picks = [len(row[0]) % 2 for row in texts]
            labels = np.array([[self.labels[p]] for p in picks], dtype=np.object_)
            probs = np.array([[1.0 - p, float(p)] for p in picks], dtype=np.float32)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("LABEL", labels), pb_utils.Tensor("PROBABILITIES", probs)]
            ))
        return responses
"""

TOKENS_MODEL_CONFIG = """
name: "echo_tokens"
backend: "python"
max_batch_size: 8
input [
  { name: "INPUT_IDS" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "ATTENTION_MASK" data_type: TYPE_INT64 dims: [ -1 ] }
]
output [ { name: "LOGITS" data_type: TYPE_FP32 dims: [ 2 ] } ]
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

TOKENS_MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        pass

    def execute(self, requests):
        responses = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "INPUT_IDS").as_numpy()
            mask = pb_utils.get_input_tensor_by_name(request, "ATTENTION_MASK").as_numpy()
            logits = np.stack([mask.sum(axis=1), ids.mean(axis=1)], axis=1).astype(np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("LOGITS", logits)]))
        return responses
"""


def _text_model(name: str, service_s: float = 0.0, init_s: float = 0.0, batching: bool = True,
                gather_us: int = 0) -> tuple[str, str]:
    config = TEXT_MODEL_CONFIG.replace('"echo_text"', f'"{name}"')
    if gather_us:
        gather = f"dynamic_batching {{ max_queue_delay_microseconds: {gather_us} }}"
        config = config.replace("dynamic_batching { }", gather)
    if not batching:  # one request per execution: capacity is exactly 1 / service time
        config = config.replace("max_batch_size: 8", "max_batch_size: 1").replace("dynamic_batching { }\n", "")
    code = TEXT_MODEL_PY.replace("SERVICE_S = 0.0", f"SERVICE_S = {service_s}").replace("INIT_S = 0.0",
                                                                                        f"INIT_S = {init_s}")
    return config, code


MODELS = {
    "echo_text": (TEXT_MODEL_CONFIG, TEXT_MODEL_PY),
    "echo_text_b": _text_model("echo_text_b"),
    "echo_tokens": (TOKENS_MODEL_CONFIG, TOKENS_MODEL_PY),
    "slow_text": _text_model("slow_text", service_s=0.02, batching=False),
    "slow_init": _text_model("slow_init", init_s=1.5),
    "sleepy_batch": _text_model("sleepy_batch", service_s=1.0, gather_us=300_000),
    "sleepier": _text_model("sleepier", service_s=10.0),
}


def write_repo(repo: Path, names: tuple[str, ...] = tuple(MODELS)) -> Path:
    for name in names:
        config, code = MODELS[name]
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(textwrap.dedent(config))
        (repo / name / "1" / "model.py").write_text(textwrap.dedent(code))
    return repo
