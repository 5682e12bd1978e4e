"""Decoupled (streaming) python-backend test models following the LM serving contract, for generate-mode load
tests against a real tritonserver, independent of the LM engines:

- stream_words: TEXT (BYTES [1]) [+ MAX_TOKENS (INT32 [1])] -> one response per word of the prompt, each with TEXT
  (the word) and TOKEN_IDS (1 id, or 2 for a word longer than 5 characters, so pieces carry varying token counts),
  after a 20 ms "prefill" and 5 ms per piece; stops after MAX_TOKENS tokens (finish reason "length") or at the last
  word ("eos"); the final response carries FINISH_REASON, PROMPT_TOKENS (words) and COMPLETION_TOKENS;
  a prompt with the word FAIL streams its first word, then ends with an error response (a model failing mid-stream);
- stream_words_empty_final: the same, but the final response is empty (flags only, no outputs).

Each request streams from its own thread, so concurrent streams interleave as on an LM server.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [
  {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "MAX_TOKENS" data_type: TYPE_INT32 dims: [ 1 ] optional: true }}
]
output [
  {{ name: "TEXT_OUTPUT" data_type: TYPE_STRING dims: [ -1 ] }},
  {{ name: "TOKEN_IDS" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "FINISH_REASON" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "PROMPT_TOKENS" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "COMPLETION_TOKENS" data_type: TYPE_INT32 dims: [ 1 ] }}
]
parameters [ {{ key: "final" value: {{ string_value: "{final}" }} }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

MODEL_PY = """
import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

PREFILL_S = 0.02
PIECE_S = 0.005
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.empty_final = config["parameters"]["final"]["string_value"] == "empty"

    def execute(self, requests):
        for request in requests:
            words = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()[0].decode().split()
            limit = pb_utils.get_input_tensor_by_name(request, "MAX_TOKENS")
            limit = int(limit.as_numpy()[0]) if limit is not None else 1 << 30
            threading.Thread(target=self.stream, args=(request.get_response_sender(), words, limit),
                             daemon=True).start()
        return None

    def stream(self, sender, words, limit):
        time.sleep(PREFILL_S)
        sent, reason = 0, "eos"
        for i, word in enumerate(words):
            if sent >= limit:
                reason = "length"
                break
            if word == "FAIL":
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("generation failed on FAIL")),
                            flags=FINAL)
                return
            ids = list(range(i, i + (2 if len(word) > 5 else 1)))[: limit - sent]
            sent += len(ids)
            sender.send(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("TEXT_OUTPUT", np.array([word.encode()], dtype=np.object_)),
                pb_utils.Tensor("TOKEN_IDS", np.array(ids, dtype=np.int64)),
            ]))
            time.sleep(PIECE_S)
        if sent >= limit and len(words) > 0 and reason == "eos" and sent < sum(2 if len(w) > 5 else 1 for w in words):
            reason = "length"
        if self.empty_final:
            sender.send(flags=FINAL)
            return
        sender.send(pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("FINISH_REASON", np.array([reason.encode()], dtype=np.object_)),
            pb_utils.Tensor("PROMPT_TOKENS", np.array([len(words)], dtype=np.int32)),
            pb_utils.Tensor("COMPLETION_TOKENS", np.array([sent], dtype=np.int32)),
        ]), flags=FINAL)
"""

MODELS = {"stream_words": "counts", "stream_words_empty_final": "empty"}


def write_stream_repo(repo: Path, names: tuple[str, ...] = tuple(MODELS)) -> Path:
    for name in names:
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(textwrap.dedent(CONFIG.format(name=name, final=MODELS[name])))
        (repo / name / "1" / "model.py").write_text(textwrap.dedent(MODEL_PY))
    return repo


def expected_tokens(prompt: str, max_tokens: int | None) -> int:
    """What stream_words streams for `prompt`: 1 token per word, 2 for a word longer than 5 characters, capped."""
    total = sum(2 if len(w) > 5 else 1 for w in prompt.split())
    return total if max_tokens is None else min(total, max_tokens)
