"""The LM build: a causal-LM checkpoint and eval data in, the fastest engine within the quality budget out.

    read checkpoint -> fp32 reference (torch: perplexity, greedy continuations) -> per candidate of the preset:
    build, open as a bundle, measure (perplexity, agreement, decode speed, size), judge -> choose the fastest
    within budget -> write the bundle and the report (-> publish when asked)

Every candidate is opened through `open_lm_bundle`, exactly as it will be served, so the figures in the report are
the served engine's. A candidate that cannot be built here (no builder registered, a family its runtime cannot
take, a build that fails) is listed with its reason and the next one is tried.

    report = build_lm_engine("tiny-llama", "eval.jsonl", "artifacts/builds/tiny-llama", preset="lm-nf4")
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from engineforge import progress
from engineforge.errors import (
    CheckpointError,
    ConfigError,
    EngineforgeError,
    RepositoryError,
    UnsupportedStepError,
)
from engineforge.lm.bundle import LMEngineSpec, open_lm_bundle

from .builders import LMCandidate, lm_builder, why_not
from .checkpoint import LMCheckpoint, context_length, read_lm_checkpoint
from .eval_data import LMEvalData, read_lm_eval_data
from .presets import DEFAULT_LM_PRESET, lm_preset_candidates
from .quality import (
    DEFAULT_NEW_TOKENS,
    LMBudget,
    agreement,
    compare_lm,
    completion_ids,
    encode,
    greedy_continuations,
    perplexity,
)
from .report import CHOSEN, FAILED, OVER, REFUSED, WITHIN, LMBuildReport, no_candidate_error
from .speed import DEFAULT_TIMED_TOKENS, time_decode

BUNDLE_DIR = "bundle"
PRUNING_REFUSAL = (
    "pruning decoder LMs is not supported: removing attention heads or FFN width changes what every later token "
    "sees, and FFN-width pruning with distillation did not meet the greedy-agreement budget on the decoders tried "
    "(the KV cache and generation drift compound the loss); build without pruning (e.g. --preset lm-int4)")


def check_lm_request(preset: str, eval_data: Path | None, prune: bool = False) -> tuple[LMCandidate, ...]:
    """Refuse an impossible LM build before any work; the preset's candidates."""
    if prune:
        raise UnsupportedStepError(PRUNING_REFUSAL)
    candidates = lm_preset_candidates(preset)
    if eval_data is None:
        raise ConfigError("an LM build needs eval data: --eval-data FILE.jsonl with {\"text\": ...} rows "
                          "(perplexity) and/or {\"prompt\": ...} rows (greedy agreement)")
    return candidates


def build_lm_engine(checkpoint: str | Path, eval_data: str | Path | None, output_dir: str | Path | None = None, *,
                    preset: str = DEFAULT_LM_PRESET, budget: LMBudget | None = None, threads: int | None = None,
                    publish: Callable[[Path], dict[str, Any]] | None = None, overwrite: bool = False,
                    new_tokens: int = DEFAULT_NEW_TOKENS, timed_tokens: int = DEFAULT_TIMED_TOKENS,
                    prune: bool = False) -> LMBuildReport:
    """Build, judge and keep the fastest candidate of `preset` within `budget`; `output_dir` gets `bundle/` and
    build_report.{md,json}. `publish(bundle_dir) -> details`, when given, publishes the chosen bundle (the build
    entry makes one from serve.lm_publish for --repo). Raises AccuracyBudgetExceeded (figures of every measured
    candidate) when none is within budget, StepFailedError when none could be built here."""
    candidates = check_lm_request(preset, Path(eval_data) if eval_data is not None else None, prune)
    budget = budget or LMBudget()
    started = time.perf_counter()
    data = read_lm_eval_data(Path(eval_data))  # type: ignore[arg-type]  # checked above
    given = Path(checkpoint)
    name = given.stem if given.suffix == ".gguf" else given.name
    out = _prepare_output(Path(output_dir or Path("artifacts/builds") / name), given, overwrite)
    with progress.stage("reading the checkpoint"):
        # A .gguf is dequantized into the output's work dir: every later step reads one Hugging Face layout.
        ckpt = read_lm_checkpoint(given, work_dir=out / "work")
        progress.info(f"{given}: {ckpt.model_type} causal LM ({ckpt.source}); eval data {data.summary()}")
    report = LMBuildReport(preset, ckpt.to_dict(), data.summary(), budget.to_dict(),
                           {"threads": threads, "new_tokens": new_tokens, "timed_tokens": timed_tokens})
    try:
        with progress.third_party_logs_to(out / "build.log"):
            _run(report, ckpt, data, candidates, budget, out, threads, new_tokens, timed_tokens)
            if publish is not None:
                with progress.stage("publishing the bundle"):
                    report.published = publish(Path(report.bundle_dir or ""))
        report.status = "ok"
    except BaseException as exc:
        report.status, report.error = "failed", str(exc) or type(exc).__name__
        raise
    finally:
        report.total_seconds = round(time.perf_counter() - started, 2)
        report.write(out)
    return report


def _reference(report: LMBuildReport, ckpt: LMCheckpoint, data: LMEvalData, budget: LMBudget, threads: int | None,
               new_tokens: int, timed_tokens: int) -> tuple[Any, float | None, list[list[int]], list[int]]:
    """The fp32 model in torch: (tokenizer, perplexity, reference continuations, the timing prompt)."""
    from engineforge.lm.torch_engine import TorchLMEngine

    with progress.stage("fp32 reference (torch)"):
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the build prints its own progress lines
        tokenizer = _tokenizer(ckpt.hf_dir)
        model = AutoModelForCausalLM.from_pretrained(str(ckpt.hf_dir), local_files_only=True, device_map="cpu")
        reference = TorchLMEngine(model, _eos_ids(ckpt, tokenizer), threads=threads)
        ref_ppl = perplexity(reference, tokenizer, data.texts) if data.texts else None
        ref_ids = _references(data, greedy_continuations(reference, tokenizer, data.prompt_texts, new_tokens),
                              tokenizer, report, budget, new_tokens)
        timing_prompt = encode(tokenizer, data.prompt_texts[0] if data.prompts else data.texts[0])[:32]
        report.reference.update({"perplexity": _r(ref_ppl), "prompts": len(ref_ids),
                                 "size_mb": _weights_mb(ckpt.hf_dir),
                                 **time_decode(reference, timing_prompt, timed_tokens)})
        progress.info(f"fp32 perplexity {_r(ref_ppl)}, {report.reference['tokens_per_s']} tokens/s")
        del reference, model
    return tokenizer, ref_ppl, ref_ids, timing_prompt


def _run(report: LMBuildReport, ckpt: LMCheckpoint, data: LMEvalData, candidates: tuple[LMCandidate, ...],
         budget: LMBudget, out: Path, threads: int | None, new_tokens: int, timed_tokens: int) -> None:
    tokenizer, ref_ppl, ref_ids, timing_prompt = _reference(report, ckpt, data, budget, threads, new_tokens,
                                                            timed_tokens)
    work = out / "candidates"
    for number, candidate in enumerate(candidates, start=1):
        row: dict[str, Any] = {"candidate": candidate.name, "runtime": candidate.runtime,
                               "precision": candidate.precision, "group_size": candidate.group_size}
        report.candidates.append(row)
        reason = _refusal(ckpt, candidate)
        if reason:
            row.update(status=REFUSED, reason=reason)
            progress.info(f"candidate {number}/{len(candidates)} {candidate.name}: refused ({reason})")
            continue
        with progress.stage(f"candidate {number}/{len(candidates)} {candidate.name}"):
            try:
                spec, figures = _measure(ckpt, candidate, work / f"{number}", tokenizer, data, ref_ppl, ref_ids,
                                         budget, threads, new_tokens, timed_tokens, timing_prompt)
            except EngineforgeError as exc:
                row.update(status=FAILED, reason=str(exc))
            except Exception as exc:  # a runtime's own failure (e.g. bitsandbytes' CPU shape limits): next candidate
                row.update(status=FAILED, reason=f"{type(exc).__name__}: {exc}")
            else:
                problems = figures.pop("violations")
                row.update(figures, status=OVER if problems else WITHIN, reason="; ".join(problems) or None)
            if row["status"] != WITHIN:  # cannot be chosen: its files (GBs for a real LM) go now
                shutil.rmtree(work / f"{number}", ignore_errors=True)
            progress.info(f"{candidate.name}: {row['status']}" + (f" ({row['reason']})" if row.get("reason") else ""))
    within = [(i, row) for i, row in enumerate(report.candidates, start=1) if row["status"] == WITHIN]
    if not within:
        shutil.rmtree(work, ignore_errors=True)
        raise no_candidate_error(report, budget)
    number, chosen = max(within, key=lambda item: item[1].get("tokens_per_s") or 0.0)
    chosen["status"] = CHOSEN
    report.chosen = chosen["candidate"]
    with progress.stage(f"writing the bundle ({chosen['candidate']})"):
        bundle = out / BUNDLE_DIR
        shutil.move(str(work / f"{number}"), str(bundle))
        spec = LMEngineSpec.load(bundle)
        build_figures = {"preset": report.preset, "reference": report.reference, "budget": report.budget,
                         **{k: v for k, v in chosen.items() if k not in ("status", "reason")}}
        replace(spec, build=build_figures).save(bundle)
        shutil.rmtree(work, ignore_errors=True)
        report.bundle_dir = str(bundle)


def _measure(ckpt: LMCheckpoint, candidate: LMCandidate, bundle: Path, tokenizer: Any, data: LMEvalData,
             ref_ppl: float | None, ref_ids: list[list[int]], budget: LMBudget, threads: int | None,
             new_tokens: int, timed_tokens: int, timing_prompt: list[int]) -> tuple[LMEngineSpec, dict[str, Any]]:
    """Build one candidate as a bundle, open it as served, and measure it against the reference."""
    bundle.mkdir(parents=True, exist_ok=True)
    details = lm_builder(candidate.runtime).build(ckpt.hf_dir, candidate, bundle / "model", threads)
    tokenizer.save_pretrained(str(bundle / "tokenizer"))
    max_length = context_length(ckpt.config)
    max_length = min(max_length, int(details.get("max_length") or max_length))  # a builder may serve fewer
    spec = LMEngineSpec(candidate.runtime, candidate.precision, ckpt.family.name, max_length, _eos_ids(ckpt, tokenizer),
                        group_size=candidate.group_size, threads=threads)
    spec.save(bundle)
    spec, engine, served_tokenizer = open_lm_bundle(bundle, threads=threads)
    ppl = perplexity(engine, served_tokenizer, data.texts) if data.texts else None
    ids = greedy_continuations(engine, served_tokenizer, data.prompt_texts, new_tokens)
    comparison = compare_lm(candidate.precision, ref_ppl, ppl, data.prompt_texts, ref_ids, ids,
                            decode=lambda t: served_tokenizer.decode([t]), n=new_tokens)
    speed = time_decode(engine, timing_prompt, timed_tokens)
    figures = comparison.figures()
    return spec, {"perplexity": figures["perplexity"], "perplexity_increase_pct": figures["perplexity_increase_pct"],
                  "agreement": figures["agreement"], **speed, "size_mb": _mb(bundle / "model"),
                  "comparison": figures, "build_details": details, "settings": engine.settings(),
                  "violations": comparison.violations(budget)}


def _references(data: LMEvalData, fp32_ids: list[list[int]], tokenizer: Any, report: LMBuildReport,
                budget: LMBudget, n: int) -> list[list[int]]:
    """What each prompt's continuation is judged against: its given completion, else fp32's own greedy output.
    How well fp32 itself follows the given completions goes in the report: below the agreement budget, no
    quantized engine is likely to meet it."""
    given = [i for i, p in enumerate(data.prompts) if p.completion is not None]
    if not given:
        return fp32_ids
    references = [completion_ids(tokenizer, p.prompt, p.completion) if p.completion is not None else ids
                  for p, ids in zip(data.prompts, fp32_ids, strict=True)]
    fp32_agreement = agreement([references[i] for i in given], [fp32_ids[i] for i in given], n)
    report.reference["agreement_with_completions"] = round(fp32_agreement, 4)
    if fp32_agreement < budget.min_agreement:
        progress.info(f"fp32 itself continues only {fp32_agreement:.0%} of the {len(given)} given completions "
                      f"(budget >= {budget.min_agreement:.0%}): the agreement budget may be out of reach")
    return references


def _refusal(ckpt: LMCheckpoint, candidate: LMCandidate) -> str:
    """Why `candidate` cannot be built here ("" when it can): its runtime not installed, or why_not's reason."""
    try:
        lm_builder(candidate.runtime)
    except ConfigError:
        return (f"{candidate.runtime} is not installed or registered here (no LM builder for it); the preset's "
                "next candidate is tried")
    reason = why_not(ckpt.family.name, candidate)
    if not reason and candidate.method == "gguf" and ckpt.source != "gguf":
        reason = "keeps a .gguf checkpoint's own 4-bit blocks; this checkpoint is a Hugging Face directory"
    return reason


def _eos_ids(ckpt: LMCheckpoint, tokenizer: Any) -> tuple[int, ...]:
    """EOS ids from config.json (an int or a list) and the tokenizer: generation must stop on any of them."""
    ids = ckpt.config.get("eos_token_id")
    found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if getattr(tokenizer, "eos_token_id", None) is not None:
        found.add(tokenizer.eos_token_id)
    if not found:
        raise CheckpointError(f"{ckpt.hf_dir}: neither config.json nor the tokenizer names an EOS token; set "
                              "eos_token_id in config.json")
    return tuple(sorted(int(i) for i in found))


def _prepare_output(out: Path, given: Path, overwrite: bool) -> Path:
    """Create the output dir; refuse the checkpoint's own directory, or an earlier build unless asked."""
    resolved, source = out.resolve(), given.resolve()
    if resolved == source or resolved.is_relative_to(source) or source.is_relative_to(resolved):
        raise ConfigError(f"output directory {out} would overwrite the input checkpoint {given}: choose a "
                          "directory outside it (e.g. artifacts/builds/NAME)")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"output directory {out} is not empty: pass --overwrite to replace it or choose "
                              "another --output")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _tokenizer(hf_dir: Path) -> Any:
    """The checkpoint's fast tokenizer, loaded as a served bundle's is."""
    from engineforge.engines.tokenize_runtime import load_tokenizer

    try:
        return load_tokenizer(hf_dir)
    except RepositoryError as exc:
        raise CheckpointError(f"{exc} (the checkpoint's tokenizer: save it with the model)") from exc


def _mb(path: Path) -> float:
    """Size of a file, or of every file under a directory."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return round(sum(p.stat().st_size for p in files) / 1e6, 2)


def _weights_mb(hf_dir: Path) -> float:
    return round(sum(_mb(p) for p in hf_dir.glob("*.safetensors")) or _mb(hf_dir), 2)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
