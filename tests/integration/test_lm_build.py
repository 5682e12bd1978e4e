"""The LM build on tiny trained causal LMs (llama, gpt2) through the torch runtime: the bundle it writes opens
and generates what the in-process fp32 model generates, a missed budget fails naming figures, refused and failed
candidates are listed with their reason, and `build-engine` routes an LM directory and refuses bad input cleanly."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from engineforge.build.cli import main
from engineforge.build.lm import build as lm_build
from engineforge.build.lm.builders import LMCandidate
from engineforge.build.lm.quality import LMBudget, greedy_continuations
from engineforge.build.lm.report import CHOSEN, REFUSED
from engineforge.build.steps import PruneConfig
from engineforge.commands.build_engine import prepare_build
from engineforge.errors import AccuracyBudgetExceeded, StepFailedError, UnsupportedStepError
from engineforge.lm.bundle import open_lm_bundle
from tests.helpers.tiny_lm import LM_PROMPTS, LM_TEXTS, make_tiny_lm, write_lm_eval_data


@pytest.fixture(scope="module")
def lm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lms")
    return {"llama": make_tiny_lm(root / "tiny-llama", "llama"), "gpt2": make_tiny_lm(root / "tiny-gpt2", "gpt2"),
            "eval": write_lm_eval_data(root / "eval.jsonl")}


def _fp32_greedy(hf_dir: Path) -> list[list[int]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engineforge.lm.torch_engine import TorchLMEngine

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    return greedy_continuations(TorchLMEngine(model, [tokenizer.eos_token_id]), tokenizer, LM_PROMPTS)


def test_lm_fp32_bundle_generates_what_the_fp32_model_does(lm_dirs: dict[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A runtime with no builder comes first: it is listed as refused and the torch fallback is built.
    monkeypatch.setattr(lm_build, "lm_preset_candidates",
                        lambda name: (LMCandidate("no-such-runtime", "int4", 32), LMCandidate("torch", "fp32")))
    report = prepare_build(lm_dirs["llama"], preset="lm-fp32", output_dir=tmp_path / "out",
                           data={"eval_data": lm_dirs["eval"]}, publish={"repo_dir": str(tmp_path / "repo")},
                           intra_op_threads=1).run()
    refused, chosen = report.candidates
    assert refused["status"] == REFUSED and "no-such-runtime is not installed or registered" in refused["reason"]
    assert chosen["status"] == CHOSEN and chosen["agreement"] == 1.0 and chosen["perplexity_increase_pct"] == 0
    assert chosen["tokens_per_s"] > 0 and chosen["ttft_ms"] > 0 and chosen["size_mb"] > 0
    spec, engine, tokenizer = open_lm_bundle(Path(report.bundle_dir or ""))
    assert (spec.runtime, spec.precision, spec.family) == ("torch", "fp32", "llama")
    assert spec.build["agreement"] == 1.0 and spec.build["preset"] == "lm-fp32"
    assert greedy_continuations(engine, tokenizer, LM_PROMPTS) == _fp32_greedy(lm_dirs["llama"])
    saved = json.loads((tmp_path / "out" / "build_report.json").read_text())
    assert saved["status"] == "ok" and saved["chosen"] == "torch fp32"
    markdown = (tmp_path / "out" / "build_report.md").read_text()
    assert "| torch fp32 | " in markdown and "| no-such-runtime int4 g32 | – |" in markdown
    assert "refused: no-such-runtime" in markdown
    assert not (tmp_path / "out" / "candidates").exists()  # only the chosen engine is kept
    if importlib.util.find_spec("engineforge.serve.lm_publish") is None:
        assert report.published and report.published["skipped"] == "engineforge.serve.lm_publish is not installed"


def test_lm_nf4_on_gpt2_is_built_or_refused_with_its_reason(lm_dirs: dict[str, Path], tmp_path: Path) -> None:
    try:
        report = lm_build.build_lm_engine(lm_dirs["gpt2"], lm_dirs["eval"], tmp_path / "out", preset="lm-nf4",
                                          threads=1)
    except StepFailedError as exc:  # bitsandbytes' CPU kernels refuse some shapes: a reason, not a crash
        assert "torch nf4: failed (" in str(exc)
        pytest.skip(f"nf4 not buildable here: {exc}")
    row = report.chosen_row
    assert row is not None and row["precision"] == "nf4" and 0 <= row["agreement"] <= 1
    spec, engine, tokenizer = open_lm_bundle(Path(report.bundle_dir or ""))
    assert (spec.precision, spec.family) == ("nf4", "gpt2")
    agreeing = sum(a == b for a, b in zip(greedy_continuations(engine, tokenizer, LM_PROMPTS),
                                          _fp32_greedy(lm_dirs["gpt2"]), strict=True))
    assert agreeing / len(LM_PROMPTS) == row["agreement"]  # the report's figure is the bundle's


def test_given_completions_are_the_reference_and_fp32s_own_agreement_is_reported(lm_dirs: dict[str, Path],
                                                                                tmp_path: Path) -> None:
    rows = [{"prompt": " ".join(t.split()[:3]), "completion": " " + " ".join(t.split()[3:])} for t in LM_TEXTS[:4]]
    rows.append({"prompt": "this prompt", "completion": " was never seen in training at all"})
    eval_data = tmp_path / "completions.jsonl"
    eval_data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = prepare_build(lm_dirs["llama"], preset="lm-fp32", output_dir=tmp_path / "out", publish=False,
                           data={"eval_data": eval_data}, budget={"min_agreement": 0.0}, intra_op_threads=1).run()
    fp32_own = report.reference["agreement_with_completions"]
    assert fp32_own <= 0.8  # the unseen completion is not what the model says
    assert report.chosen_row is not None and report.chosen_row["agreement"] == fp32_own  # torch fp32 is fp32
    assert report.reference["perplexity"] is None and report.chosen_row["perplexity"] is None  # no text rows


def test_a_budget_no_candidate_meets_fails_naming_figures(lm_dirs: dict[str, Path], tmp_path: Path) -> None:
    budget = LMBudget(max_ppl_increase_nf4=0.0, min_agreement=1.0)
    try:
        lm_build.build_lm_engine(lm_dirs["llama"], lm_dirs["eval"], tmp_path / "out", preset="lm-nf4",
                                 budget=budget, threads=1)
    except StepFailedError as exc:
        pytest.skip(f"nf4 not buildable here: {exc}")
    except AccuracyBudgetExceeded as exc:
        assert "no candidate of preset lm-nf4 is within the LM budget" in str(exc)
        assert "torch nf4: perplexity" in str(exc) and "--max-ppl-increase" in str(exc)
        assert exc.figures and exc.figures[0]["candidate"] == "torch nf4" and "perplexity" in exc.figures[0]
        report = json.loads((tmp_path / "out" / "build_report.json").read_text())
        assert report["status"] == "failed" and report["candidates"][0]["status"] == "over budget"
    else:
        pytest.fail("a 0 % perplexity budget with 100 % agreement was met by nf4")


def test_a_candidate_whose_build_raises_is_listed_failed_and_the_build_says_why(
        lm_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engineforge.build.lm.builders import LMBuilder

    def refuse_shape(hf_dir: Path, candidate: LMCandidate, model_dir: Path, threads: int | None) -> dict[str, str]:
        raise RuntimeError("bitsandbytes CPU kernel: in_features 48 is not a multiple of 64")

    monkeypatch.setattr(lm_build, "lm_builder", lambda runtime: LMBuilder(runtime, refuse_shape, lambda f, c: ""))
    with pytest.raises(StepFailedError, match="no candidate of preset lm-nf4 could be built here: torch nf4: failed "
                       r"\(RuntimeError: bitsandbytes CPU kernel: in_features 48"):
        lm_build.build_lm_engine(lm_dirs["llama"], lm_dirs["eval"], tmp_path / "out", preset="lm-nf4", threads=1)
    report = json.loads((tmp_path / "out" / "build_report.json").read_text())
    assert report["candidates"][0]["status"] == "failed" and not (tmp_path / "out" / "candidates").exists()


def test_build_engine_cli_builds_an_lm_directory(lm_dirs: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main([str(lm_dirs["llama"]), "--eval-data", str(lm_dirs["eval"]), "--preset", "lm-fp32", "--no-publish",
                 "--output", str(out), "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "# LM build report: OK" in captured.out and "Traceback" not in captured.err
    assert "[engineforge] fp32 reference (torch)" in captured.err
    assert (out / "bundle" / "lm_engine.json").is_file()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--eval-data", "{tmp}/missing.jsonl"], 1, "missing.jsonl does not exist"),
    (["--eval-data", "{eval}", "--preset", "lm-bogus"], 2, "unknown LM preset 'lm-bogus'"),
    (["--eval-data", "{eval}", "--preset", "int8"], 2, "preset 'int8' builds encoders"),
    ([], 2, "an LM build needs eval data"),
    (["--eval-data", "{eval}", "--train-data", "{eval}"], 2, "--train-data: encoder-build option"),
])
def test_build_engine_cli_refuses_bad_lm_input_cleanly(lm_dirs: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str], args: list[str],
                                                       code: int, message: str) -> None:
    args = [a.format(tmp=tmp_path, eval=lm_dirs["eval"]) for a in args]
    assert main([str(lm_dirs["llama"]), *args, "--no-publish", "--output", str(tmp_path / "out")]) == code
    err = capsys.readouterr().err
    assert message in err and err.startswith("build-engine: error:") and "Traceback" not in err


def test_lm_preset_on_an_encoder_and_text_generation_task_on_one_are_refused(
        tiny_checkpoint: Path, lm_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [str(tiny_checkpoint), "--eval-data", str(lm_dirs["eval"]), "--no-publish", "--output", str(tmp_path)]
    assert main([*base, "--preset", "lm-int4"]) == 2
    assert "preset lm-int4 builds decoder LMs" in capsys.readouterr().err
    assert main([*base, "--task", "text-generation"]) == 1
    assert "--task text-generation needs a causal LM" in capsys.readouterr().err


def test_pruning_a_decoder_is_refused_with_the_reason(lm_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UnsupportedStepError, match=r"pruning decoder LMs is not supported: .*build without pruning"):
        prepare_build(lm_dirs["llama"], steps=[PruneConfig()], data={"eval_data": lm_dirs["eval"]})
    with pytest.raises(UnsupportedStepError, match="pruning decoder LMs is not supported"):
        lm_build.build_lm_engine(lm_dirs["llama"], lm_dirs["eval"], tmp_path / "out", prune=True)


@pytest.mark.parametrize(("layout", "preset"), [("qwen2", "lm-int4"), ("llama", "lm-int8")])
def test_each_onnxruntime_genai_preset_builds_a_bundle_that_keeps_its_figures(tmp_path: Path, layout: str,
                                                                             preset: str) -> None:
    """Every candidate of the preset is built and judged; the fastest within budget is kept, and its bundle
    generates what the report says it does."""
    from engineforge.build.lm.presets import lm_preset_candidates

    hf_dir = make_tiny_lm(tmp_path / layout, layout)
    eval_data = write_lm_eval_data(tmp_path / "eval.jsonl")
    report = lm_build.build_lm_engine(hf_dir, eval_data, tmp_path / "out", preset=preset, threads=1)
    rows = {row["candidate"]: row for row in report.candidates}
    assert list(rows) == [c.name for c in lm_preset_candidates(preset)]
    assert {row["status"] for row in rows.values()} <= {"chosen", "within budget", "over budget", "failed", "refused"}
    chosen = report.chosen_row
    assert chosen is not None and chosen["status"] == CHOSEN
    within = [r for r in rows.values() if r["status"] in (CHOSEN, "within budget")]
    assert chosen["tokens_per_s"] == max(r["tokens_per_s"] for r in within)  # the fastest within budget
    for row in rows.values():
        if row["runtime"] == "onnxruntime" and row["precision"] == "int4" and row["status"] != "failed":
            assert row["group_size"] == 32
    spec, engine, tokenizer = open_lm_bundle(Path(report.bundle_dir or ""))
    assert (spec.runtime, spec.precision) == (chosen["runtime"], chosen["precision"])
    agreeing = sum(a == b for a, b in zip(greedy_continuations(engine, tokenizer, LM_PROMPTS),
                                          _fp32_greedy(hf_dir), strict=True))
    assert agreeing / len(LM_PROMPTS) == chosen["agreement"]


def test_gpt2_lists_the_model_builder_runtime_as_refused(lm_dirs: dict[str, Path], tmp_path: Path) -> None:
    try:
        report = lm_build.build_lm_engine(lm_dirs["gpt2"], lm_dirs["eval"], tmp_path / "out", preset="lm-int4",
                                          threads=1)
        rows = report.candidates
    except (StepFailedError, AccuracyBudgetExceeded) as exc:  # nf4 may fail on bitsandbytes' CPU shapes
        rows = exc.report.candidates if hasattr(exc, "report") else []  # type: ignore[attr-defined]
        assert "no GPT-2 exporter" in str(exc)
    ort = [r for r in rows if r["runtime"] == "onnxruntime"]
    assert ort and all(r["status"] == REFUSED and "no GPT-2 exporter" in r["reason"] for r in ort)
