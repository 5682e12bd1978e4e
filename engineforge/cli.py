"""`engineforge`: one command family (build, serve, infer, generate, rollback, tune, k8s, loadtest, demo). Thin:
parse, then call functions."""

from __future__ import annotations

import argparse
import sys


def make_parser() -> argparse.ArgumentParser:
    from engineforge.commands import tune
    from engineforge.demo import run as demo
    from engineforge.loadtest import cli as loadtest_cli
    from engineforge.serve import cli as serve_cli
    from engineforge.serve import kubernetes, lm_cli, versions

    parser = argparse.ArgumentParser(prog="engineforge", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="print the traceback after an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = sub.add_parser("build", help="same as build-engine (see `build-engine --help`)", add_help=False)
    build.add_argument("build_args", nargs=argparse.REMAINDER)
    build.set_defaults(func=_run_build)
    serve_cli.add_parsers(sub)
    lm_cli.add_parser(sub)
    versions.add_parser(sub)
    tune.add_parser(sub)
    kubernetes.add_parser(sub)
    loadtest_cli.add_parser(sub)
    demo.add_parser(sub)
    return parser


def _run_build(args: argparse.Namespace) -> int:
    from engineforge.build.cli import main as build_main

    return build_main(args.build_args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["build"]:  # argparse's REMAINDER drops a leading option: hand everything to build-engine
        from engineforge.build.cli import main as build_main

        return build_main(argv[1:])
    args = make_parser().parse_args(argv)
    if args.debug:
        from engineforge.cli_support import enable_debug

        enable_debug()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
