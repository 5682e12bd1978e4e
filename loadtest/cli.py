"""`engineforge loadtest`: closed-loop (concurrency) or open-loop (`--rate`) gRPC load test of a model served by
Triton.

The top-level CLI only needs:

    from engineforge.loadtest import cli as loadtest_cli
    loadtest_cli.add_parser(subparsers)      # registers "loadtest", sets args.func = loadtest_cli.run
    ...
    return args.func(args)

Exit codes of `run` (as for every engineforge command): 0 success; 1 failure (no server, model not
ready, or a level had no successful request or was aborted); 2 usage error (bad settings); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from engineforge.cli_support import arguments_checked, run_command
from engineforge.defaults import DEFAULT_GRPC_URL
from engineforge.errors import UsageError
from engineforge.progress import info

from .config import DEFAULT_TIMEOUT_S, MODES, LoadTestConfig, parse_concurrency, parse_rates, parse_workers
from .generate_cli import add_generate_arguments, generate_settings, run_generate

DEFAULT_OUT = "reports/loadtest"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `loadtest` subcommand on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "loadtest",
        help="measure latency and throughput of a served model over gRPC",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    configure_parser(parser)
    parser.set_defaults(func=run)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Every `loadtest` flag, in --help's order: server and model, levels, SLO, windows, payload, reports."""
    defaults = LoadTestConfig(model="-")
    _add_target_arguments(parser, defaults)
    _add_level_arguments(parser, defaults)
    _add_window_arguments(parser, defaults)
    _add_payload_arguments(parser, defaults)
    add_generate_arguments(parser)
    _add_report_arguments(parser, defaults)


def _add_target_arguments(parser: argparse.ArgumentParser, defaults: LoadTestConfig) -> None:
    """What is load-tested: the server (and how to reach it, TLS included), the model, the mode."""
    parser.add_argument("--url", default=DEFAULT_GRPC_URL, help="Triton gRPC address host:port")
    from engineforge.grpc_channel import add_tls_arguments

    add_tls_arguments(parser)
    parser.add_argument("--model", required=True,
                        help="model name in the Triton repository (the ensemble for text); several, comma-separated, "
                        "are load-tested level by level, interleaved, and compared in one report")
    parser.add_argument("--mode", choices=MODES, default=defaults.mode,
                        help="text: raw strings to the ensemble (tokenization included); tokens: synthetic token ids "
                        "to the engine model (measures the engine alone); generate: streamed prompts to a decoupled "
                        "LM (TTFT, inter-token latency, tokens/s)")


def _add_level_arguments(parser: argparse.ArgumentParser, defaults: LoadTestConfig) -> None:
    """The levels: closed-loop concurrencies or open-loop rates, and the processes that generate them."""
    parser.add_argument(
        "--concurrency",
        type=parse_concurrency,
        default=",".join(map(str, defaults.concurrency)),
        help="comma-separated in-flight request counts, one measurement each, e.g. 1,4,16",
    )
    parser.add_argument(
        "--rate",
        type=parse_rates,
        help="open loop instead of concurrency: comma-separated target rates in req/s, e.g. 50,100,200; latency is "
        "measured from each request's scheduled send (no coordinated omission)",
    )
    parser.add_argument("--arrival", choices=("constant", "poisson"), default=defaults.arrival,
                        help="open loop: evenly spaced or Poisson arrivals")
    parser.add_argument("--max-in-flight", type=int, default=defaults.max_in_flight,
                        help="open loop: requests in flight at most (beyond it sends fall behind, reported)")
    parser.add_argument("--workers", type=parse_workers, default=defaults.workers,
                        help="load-generator processes sharing each level (the rate or the concurrency is split "
                        "between them), or 'auto': start with one and add one whenever a level was limited by the "
                        "generator itself, up to the machine's cores")


def _add_window_arguments(parser: argparse.ArgumentParser, defaults: LoadTestConfig) -> None:
    """How each level is judged and measured: the SLO, stability windows, durations, batch and timeout."""
    parser.add_argument("--slo", help="objectives checked at every level, e.g. 'p99<50ms,errors<1%%'; a miss exits 1")
    parser.add_argument("--find-max", action="store_true",
                        help="with --slo: search the highest concurrency (or --rate) that meets it, starting from the "
                        "first level given")
    parser.add_argument("--stable", type=int, default=0, metavar="N",
                        help="measure up to N windows of --duration per level, until the last 3 agree on throughput "
                        "and p99 within --stability-tolerance (0: one window)")
    parser.add_argument("--stability-tolerance", type=float, default=defaults.stability_tolerance,
                        help="with --stable: allowed spread around the mean, as a fraction")
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=defaults.warmup_s, help="discarded seconds per level")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="items per request")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per-request timeout, seconds")


def _add_payload_arguments(parser: argparse.ArgumentParser, defaults: LoadTestConfig) -> None:
    """What each request carries: texts (with labels to check) or synthetic token ids of some lengths."""
    parser.add_argument(
        "--texts-file",
        help="payload texts (text mode): CSV with a 'text' column, JSONL with a 'text' field, or one text per line "
        "(default: built-in customer-support messages); with a 'label' column/field every answer of a classifier "
        "is checked against it (accuracy reported apart from latency)",
    )
    parser.add_argument("--seq-len", default=str(defaults.seq_len),
                        help="tokens mode: tokens per item, or a distribution: 32-256 (uniform), 32,64,128 (one of), "
                        "normal:96,32 (mean,std); a batch is padded to its longest item")
    parser.add_argument(
        "--token-type-ids",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tokens mode: send TOKEN_TYPE_IDS (default: iff the model declares it)",
    )


def _add_report_arguments(parser: argparse.ArgumentParser, defaults: LoadTestConfig) -> None:
    """Where and how the reports are written, and how often progress is shown."""
    parser.add_argument("--label", help="variant name recorded in the reports, e.g. fp16-trt")
    parser.add_argument("--out", default=DEFAULT_OUT, help="report directory")
    parser.add_argument("--name", help="report file stem (default: loadtest_<model>[_<label>]_<mode>)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    parser.add_argument("--save-records", action="store_true", help="also write every request as JSONL")
    parser.add_argument(
        "--progress-every", type=float, default=defaults.progress_every_s, help="seconds between progress lines"
    )


def config_from_args(args: argparse.Namespace) -> LoadTestConfig:
    from .payloads import DEFAULT_TEXTS, load_labelled_texts

    concurrency = args.concurrency
    if isinstance(concurrency, str):  # argparse does not run `type` on string defaults set elsewhere
        concurrency = parse_concurrency(concurrency)
    texts, source, labels = DEFAULT_TEXTS, "built-in", None
    if args.texts_file:
        loaded, labels = load_labelled_texts(args.texts_file)
        texts, source = tuple(loaded), str(args.texts_file)
    from engineforge.grpc_channel import ClientTls

    return LoadTestConfig(
        model=args.model,
        url=args.url,
        tls=ClientTls.from_args(args.tls_ca, args.tls_cert, args.tls_key),
        mode=args.mode,
        concurrency=concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        batch_size=args.batch_size,
        timeout_s=args.timeout,
        texts=texts,
        texts_source=source,
        labels=tuple(labels or ()),
        seq_len=int(args.seq_len) if str(args.seq_len).strip().isdigit() else args.seq_len,
        token_type_ids=args.token_type_ids,
        label=args.label,
        progress_every_s=args.progress_every,
        rates=args.rate or (),
        arrival=args.arrival,
        max_in_flight=args.max_in_flight,
        stability_windows=args.stable,
        stability_tolerance=args.stability_tolerance,
        workers=args.workers,
        **generate_settings(args),
    )


def run(args: argparse.Namespace) -> int:
    """Run the load test described by parsed `args`, print the table, write the reports."""
    return run_command("engineforge loadtest", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from .slo import parse_slo

    with arguments_checked():
        config = config_from_args(args)
        conditions = parse_slo(args.slo) if args.slo else ()
        if args.find_max and not conditions:
            raise UsageError("--find-max needs --slo (the objective the search keeps to)")
    if config.mode == "generate":
        return run_generate(args, config)
    models = [m for m in config.model.split(",") if m]
    if len(models) > 1:
        if args.find_max:
            raise UsageError("--find-max searches one model; compare models without it")
        return _run_comparison(args, config, models, conditions)
    if args.find_max:
        return _run_find_max(args, config, conditions)
    return _run_levels(args, config, conditions)


def _run_levels(args: argparse.Namespace, config: LoadTestConfig, conditions: tuple) -> int:
    """Every level of `config`; 1 when a level failed or missed the SLO."""
    from .runner import run_loadtest
    from .slo import verdict, verdict_line

    result = run_loadtest(config)
    if conditions:  # judged before writing, so every report stores the verdict
        result.slo = verdict(conditions, [level.to_dict() for level in result.levels], args.slo)
    _write_and_print(args, result)
    if result.slo is not None:
        print(verdict_line(result.slo))
    if result.failed:
        info("some concurrency levels had no successful request or were aborted; see the report")
        return 1
    missed = result.slo["missed"] if result.slo is not None else []
    for line in missed:
        info(line)
    return 1 if missed else 0


def _run_find_max(args: argparse.Namespace, config: LoadTestConfig, conditions: tuple) -> int:
    """`--find-max`: the highest level meeting the SLO; 1 when even the first level misses it."""
    from .slo import find_max, verdict

    search = find_max(config, conditions, log=info)
    result = run_result_of(config, search["levels"])
    result.slo = verdict(conditions, [level.to_dict() for level in result.levels], args.slo)
    result.slo["search"] = {"what": "rate" if search["open_loop"] else "concurrency", "best": search["best"],
                            "first_miss": search["first_miss"]}
    result.slo["met"] = search["best"] is not None
    _write_and_print(args, result)
    what = "rate" if search["open_loop"] else "concurrency"
    if search["best"] is None:
        info(f"find-max: even {what} {search['probes'][0]['value']:g} misses the SLO {args.slo!r}")
        return 1
    print(f"highest {what} meeting the SLO {args.slo!r}: {search['best']:g}"
          + (f" (first miss: {search['first_miss']:g})" if search["first_miss"] is not None else
             " (no miss within the probe budget)"))
    return 0


def _run_comparison(args: argparse.Namespace, config: LoadTestConfig, models: list[str], conditions: tuple) -> int:
    """Several models under the same levels, one comparison report; 1 when any failed or missed the SLO."""
    from .compare import comparison_table, run_comparison, write_comparison
    from .slo import verdict, verdict_line

    results = run_comparison(config, models)
    for r in results:
        r.slo = verdict(conditions, [level.to_dict() for level in r.levels], args.slo) if conditions else None
    paths = write_comparison(results, args.out, stem=args.name or "comparison", plot=not args.no_plot)
    print(comparison_table(results))
    info("reports: " + ", ".join(str(p) for p in paths.values()))
    missed = [f"{r.config.model}: {line}" for r in results for line in r.slo["missed"]] if conditions else []
    for line in missed:
        info(line)
    for r in results if conditions else ():
        print(f"{r.config.model}: {verdict_line(r.slo)}")
    return 1 if missed or any(r.failed for r in results) else 0


def _write_and_print(args: argparse.Namespace, result: Any) -> None:
    """Every report file, the results table on stdout, where the reports went."""
    from .markdown_report import markdown_table
    from .report_files import write_reports

    paths = write_reports(result, args.out, stem=args.name, plot=not args.no_plot, records=args.save_records)
    print(markdown_table(result))
    info("reports: " + ", ".join(str(p) for p in paths.values()))


def run_result_of(config: LoadTestConfig, levels: list) -> Any:
    """One report for the probes of a --find-max search."""
    from datetime import UTC, datetime

    from .results import LoadTestResult

    now = datetime.now(UTC).isoformat(timespec="seconds")
    return LoadTestResult(config, levels, now, now)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: `python -m engineforge.loadtest.cli --model ...`."""
    parser = argparse.ArgumentParser(
        prog="engineforge loadtest",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
