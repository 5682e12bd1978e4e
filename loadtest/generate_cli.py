"""`engineforge loadtest --mode generate`: streaming load tests of a decoupled LM model (the flags, the settings they
make and the run), kept apart from loadtest/cli.py, which hands generate mode over here.

    engineforge loadtest --mode generate --model lm --concurrency 1,4 --prompt-len 16-64 --max-tokens 128
    engineforge loadtest --mode generate --model lm --rate 2,4 --arrival poisson --prompts prompts.jsonl

Reports (loadtest/generate_report.py, generate_html.py): <out>/<stem>.json, .md, .csv (one row per request), .png
and .html (TTFT/ITL/e2e distributions). Exit codes as for every loadtest: 0, 1 (a level failed), 2 (usage).
"""

from __future__ import annotations

import argparse
from typing import Any

from engineforge.errors import UsageError
from engineforge.progress import info

from .config import LoadTestConfig


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generate mode (streaming, decoupled LM models)")
    group.add_argument("--prompts", metavar="FILE",
                       help="prompts: JSONL with a 'prompt' (or 'text') field per line; without it, synthetic prompts "
                       "of --prompt-len words")
    group.add_argument("--prompt-len", default="128",
                       help="synthetic prompt length in words: 32, a range 16-64 (or 16:64), a list 16,32,64 or "
                       "normal:MEAN,STD; the server's PROMPT_TOKENS gives the real token count")
    group.add_argument("--max-tokens", default="128",
                       help="MAX_TOKENS per request, in the --prompt-len syntax, or 'none' to not send it")


def generate_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The LoadTestConfig fields of the generate-mode flags (empty when the parser has none of them)."""
    if not hasattr(args, "prompt_len"):
        return {}
    no_limit = str(args.max_tokens).lower() == "none"
    settings: dict[str, Any] = {"prompt_len": _spec(args.prompt_len),
                                "max_tokens": None if no_limit else _spec(args.max_tokens)}
    if args.prompts:
        from .prompts import load_prompts

        settings |= {"prompts": tuple(load_prompts(args.prompts)), "prompts_source": str(args.prompts)}
    return settings


def _spec(text: str) -> int | str:
    return int(text) if str(text).strip().isdigit() else str(text)


def run_generate(args: argparse.Namespace, config: LoadTestConfig) -> int:
    """Run every level of `config` in generate mode, write the reports, print the summary; 1 when a level failed."""
    unsupported = [flag for flag, given in (("--slo", args.slo), ("--find-max", args.find_max),
                                            ("several models", "," in config.model)) if given]
    if unsupported:
        raise UsageError(f"--mode generate does not support {', '.join(unsupported)} yet; run one model without them")
    from .generate_html import write_generate_reports
    from .generate_report import generate_report_dict, stats_table, throughput_table
    from .runner import run_loadtest

    result = run_loadtest(config)
    paths = write_generate_reports(result, args.out, stem=args.name, plot=not args.no_plot,
                                   records=args.save_records)
    levels = generate_report_dict(result)["levels"]
    for level in levels:
        info(summary_line(level))
    print(throughput_table(levels))
    print()
    print("TTFT (ms)\n" + stats_table(levels, "ttft_ms"))
    print()
    print("ITL (ms)\n" + stats_table(levels, "itl_ms"))
    info("reports: " + ", ".join(str(p) for p in paths.values()))
    if result.failed:
        info("some levels had no successful request or were aborted; see the report")
        return 1
    return 0


def summary_line(level: dict[str, Any]) -> str:
    """One line per level: what a person wants first (TTFT, ITL, output tokens/s), "—" for what did not happen."""
    from .slo import level_name

    g = level["generation"]

    def p(key: str, q: str) -> str:
        return "—" if g[key] is None else f"{g[key][q]:.1f}"

    return (f"{level_name(level)}: {g['completed']} ok / {g['errors']} failed; TTFT p50 {p('ttft_ms', 'p50')} ms "
            f"p99 {p('ttft_ms', 'p99')} ms; ITL p50 {p('itl_ms', 'p50')} ms; {g['output_tokens_per_s']:.1f} output "
            f"tok/s, {g['requests_per_s']:.2f} req/s")
