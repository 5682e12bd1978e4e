"""Builds `onnxruntime-genai` LM engines with ONNX Runtime GenAI's model builder, for the CPU execution provider.

fp32 exports the graph as is; int4 and int8 quantize every MatMul weight block-wise (MatMulNBits, symmetric, the
candidate's group size as the block size; accuracy_level 4 so activations run in int8 on CPU); the `gguf` method
then writes a .gguf checkpoint's own blocks into that graph (gguf_blocks.py). The output folder is
self-contained: model.onnx (+ model.onnx.data), genai_config.json, tokenizer files. The thread count is written into
genai_config.json's decoder session options, so the served engine runs with the threads the build measured.

The builder runs in a child process: it prints progress on stdout, holds the whole model in memory, and its
failures are turned into one typed error carrying the tail of its output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from engineforge.errors import CheckpointError

from ..files import file_mb
from .builders import LMCandidate, buildable_config, register_lm_builder
from .checkpoint import ORT, ORTGENAI, family_runtime_reason
from .gguf_blocks import BLOCK as GGUF_BLOCK
from .gguf_blocks import gguf_source, keep_gguf_blocks

PRECISIONS = ("fp32", "int8", "int4")
BLOCK_SIZES = (16, 32, 64, 128, 256)  # what the builder's block_size option accepts
DEFAULT_BLOCK = 32  # the builder's own default
ACCURACY_LEVEL = 4  # int8 activations in MatMulNBits: the CPU EP's fast path (the builder's CPU default too)
GENAI_CONFIG = "genai_config.json"


def _check(family: str, candidate: LMCandidate) -> str:
    reason = family_runtime_reason(family, candidate.runtime)
    if reason:
        return reason
    if candidate.precision not in PRECISIONS:
        return f"the model builder builds {', '.join(PRECISIONS)} on CPU, not {candidate.precision}"
    if candidate.precision == "fp32" and candidate.group_size:
        return "fp32 has no quantization groups: leave group_size unset"
    if candidate.method not in (None, "rtn") and candidate.precision != "int4":
        return f"method {candidate.method} applies to int4 weights only"
    if candidate.method == "gguf" and (candidate.group_size or DEFAULT_BLOCK) != GGUF_BLOCK:
        return f"a GGUF's 4-bit blocks hold {GGUF_BLOCK} weights: use group_size {GGUF_BLOCK}"
    if candidate.method == "gguf" and family not in ("llama", "mistral"):
        return f"the gguf method reads llama-layout GGUF files (llama, mistral), not {family}"
    if candidate.group_size and candidate.group_size not in BLOCK_SIZES:
        return (f"group_size {candidate.group_size}: the model builder's block_size takes "
                f"{', '.join(map(str, BLOCK_SIZES))}")
    return ""


def builder_options(candidate: LMCandidate) -> dict[str, Any]:
    """The model builder's --extra_options for a candidate (the names of onnxruntime-genai 0.18)."""
    if candidate.precision == "fp32":
        return {}
    options: dict[str, Any] = {"block_size": candidate.group_size or DEFAULT_BLOCK, "accuracy_level": ACCURACY_LEVEL}
    if candidate.method == "gguf":
        # The layout the GGUF's blocks are written into: a zero point per block (Q4_1 needs one) and the lm_head in
        # 8 bits (a Q8_0 head or tied embedding goes in as it is).
        return options | {"is_symmetric": False, "algo_config": "rtn_last"}
    if candidate.method and candidate.precision == "int4":
        options["algo_config"] = candidate.method
    return options


@register_lm_builder(ORT, _check)  # the same folder: the runtimes differ in how they batch, not in the files
@register_lm_builder(ORTGENAI, _check)
def build_ortgenai(hf_dir: Path, candidate: LMCandidate, model_dir: Path, threads: int | None) -> dict[str, Any]:
    hf_dir, model_dir = Path(hf_dir), Path(model_dir)
    config = buildable_config(hf_dir, candidate, _check)
    options = builder_options(candidate)
    gguf = gguf_source(hf_dir) if candidate.method == "gguf" else None  # before the builder's minutes
    with tempfile.TemporaryDirectory(prefix="ortgenai-build-") as scratch:
        source = _builder_input(hf_dir, config, Path(scratch) / "input")
        _run_builder(source, model_dir, candidate.precision, Path(scratch) / "cache", options)
    kept = keep_gguf_blocks(model_dir, gguf) if gguf else None
    write_runtime_settings(model_dir, threads)
    block_sizes = matmulnbits_block_sizes(model_dir / "model.onnx")
    if candidate.precision != "fp32" and options["block_size"] not in block_sizes:
        raise CheckpointError(f"the model builder wrote block sizes {block_sizes}, not the {options['block_size']} "
                              "asked for; rebuild with another group size")
    weights = [p for p in model_dir.iterdir() if p.name.startswith("model.onnx")]
    return {"size_mb": round(sum(file_mb(p) for p in weights), 3), "group_size": options.get("block_size"),
            "builder_options": {"precision": candidate.precision, "execution_provider": "cpu", **options},
            "matmulnbits_block_sizes": block_sizes, "threads": threads} | ({"gguf_blocks": kept} if kept else {})


def _builder_input(hf_dir: Path, config: dict[str, Any], staged: Path) -> Path:
    """The directory to hand the builder. A Phi-3 config whose original_max_position_embeddings differs from
    max_position_embeddings without LongRoPE factors sends the builder down its LongRoPE path, which then fails
    (KeyError 'multi_cache'); without rope scaling the original length has no effect, so a staged copy sets it
    equal (weights are linked, not copied)."""
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if (config.get("model_type") != "phi3" or "long_factor" in rope
            or config.get("original_max_position_embeddings") in (None, config.get("max_position_embeddings"))):
        return hf_dir
    staged.mkdir(parents=True)
    for item in hf_dir.iterdir():
        if item.name != "config.json":
            os.symlink(item.resolve(), staged / item.name)
    fixed = dict(config, original_max_position_embeddings=config["max_position_embeddings"])
    (staged / "config.json").write_text(json.dumps(fixed, indent=2))
    return staged


def _run_builder(source: Path, model_dir: Path, precision: str, cache: Path, options: dict[str, Any]) -> None:
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(model_dir),
               "-p", precision, "-e", "cpu", "-c", str(cache)]
    if options:
        command += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0 or not (model_dir / GENAI_CONFIG).is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        raise CheckpointError(f"onnxruntime-genai's model builder failed on {source} ({precision}, exit "
                              f"{done.returncode}):\n{tail}\nCheck that the checkpoint loads with transformers, or "
                              "build it with the torch runtime")


def write_runtime_settings(model_dir: Path, threads: int | None) -> None:
    """Threads go into the decoder's session options, which og.Model reads when the engine is opened."""
    path = Path(model_dir) / GENAI_CONFIG
    genai = json.loads(path.read_text())
    session = genai["model"]["decoder"].setdefault("session_options", {})
    if threads:
        session["intra_op_num_threads"] = int(threads)
        session["inter_op_num_threads"] = 1
    path.write_text(json.dumps(genai, indent=4) + "\n")


def matmulnbits_block_sizes(model_file: Path) -> list[int]:
    """Block sizes of the quantized MatMuls in the graph (weights not loaded): the group size actually built."""
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    sizes = {attr.i for node in graph.node if node.op_type == "MatMulNBits"
             for attr in node.attribute if attr.name == "block_size"}
    return sorted(sizes)
