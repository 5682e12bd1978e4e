"""Locating tritonserver, its environment, and reading its log: no server started."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from engineforge.serve.triton_env import find_triton, log_problems, log_tail, repository_models, server_environment

LOG = r"""W1124 21:20:36.841539 11384 pinned_memory_manager.cc:273] "Unable to allocate pinned memory: CUDA"
E1124 21:20:36.841674 11384 server.cc:241] "CudaDriverHelper has not been initialized."
+--------+---------+
| Model  | Version |
E1124 21:20:38.5 1 model_lifecycle.cc:642] "failed to load 'broken' version 1: Internal: RuntimeError: boom\n\nAt:\n"
Error: Failed to initialize NVML
error: creating server: Internal - failed to load all models
"""


def test_log_problems_extracts_load_failures_and_skips_gpu_noise(tmp_path: Path) -> None:
    log = tmp_path / "triton.log"
    log.write_text(LOG)
    failures, errors = log_problems(log)
    assert failures == {"broken version 1": "Internal: RuntimeError: boom"}
    assert errors == ["error: creating server: Internal - failed to load all models"]
    tail = log_tail(log)
    assert "| Model" not in tail and "+---" not in tail and tail.endswith("failed to load all models")
    assert log_tail(tmp_path / "missing.log") == "(no server log)"


def test_environment_puts_this_interpreter_first() -> None:
    installation = find_triton()
    assert installation.binary.name == "tritonserver" and installation.stub.parent.name == "3.11"
    env = server_environment(installation)
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    libs = env["LD_LIBRARY_PATH"].split(":")
    assert libs[0] == sysconfig.get_config_var("LIBDIR") and libs[1] == str(installation.libs)


def test_repository_models_are_dirs_with_config(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.pbtxt").write_text("")
    (tmp_path / "b").mkdir()
    (tmp_path / "README.md").write_text("")
    assert repository_models(tmp_path) == ["a"]
