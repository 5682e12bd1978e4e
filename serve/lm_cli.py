"""`engineforge generate`: stream a served LM's continuation of a prompt (registered by the top-level CLI).

Thin: arguments -> `EngineforgeClient.generate`. The text is printed as it streams (`--stream`, the default on a
terminal), or once complete; `--json` prints one object with the text, its token ids, the time to the first token and
the decode speed. A server that is down, an unknown model or a refused request is one error line and a non-zero exit
(engineforge.cli_support), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engineforge.cli_support import arguments_checked, run_command
from engineforge.defaults import DEFAULT_GRPC_URL
from engineforge.errors import UsageError
from engineforge.grpc_channel import ClientTls, add_tls_arguments

GENERATE_TIMEOUT_S = 10.0  # how long a server still starting or a model reloading is waited for
REQUEST_TIMEOUT_S = 30.0  # the readiness call's deadline under --timeout 0 (no retries)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("generate", help="stream a published LM's continuation of a prompt")
    parser.add_argument("prompt", help="the text to continue")
    parser.add_argument("--model", required=True, help="published LM name (publish_lm_bundle)")
    parser.add_argument("--url", default=DEFAULT_GRPC_URL, help="Triton gRPC address (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="tokens to generate at most (default: the server's, what fits up to 128)")
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: 0)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1] (default: 1)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest (default: 0 = all)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed, for reproducible samples")
    # append, not nargs="+": a trailing prompt would be taken for one more stop string
    parser.add_argument("--stop", action="append", default=[], metavar="STR",
                        help="a stop string: generation ends before it (repeat for several)")
    stream = parser.add_mutually_exclusive_group()
    stream.add_argument("--stream", dest="stream", action="store_true", default=None,
                        help="print the text as it is generated (default on a terminal)")
    stream.add_argument("--no-stream", dest="stream", action="store_false", help="print the text once complete")
    parser.add_argument("--json", action="store_true",
                        help="print {prompt, text, token_ids, ttft_ms, tokens_per_s, finish_reason} when done")
    parser.add_argument("--timeout", type=float, default=GENERATE_TIMEOUT_S,
                        help="seconds to wait for a server still starting or a model reloading; 0 = fail at once "
                             "(default: %(default)s)")
    add_tls_arguments(parser)
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    return run_command("engineforge generate", lambda: _generate(args))


def _check(args: argparse.Namespace) -> None:
    """Refuse what can never be served before connecting (the server checks again, with its limits)."""
    if not args.prompt:
        raise UsageError("the prompt is empty; give some text to continue")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UsageError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.temperature is not None and not args.temperature >= 0:
        raise UsageError(f"--temperature must be >= 0 (0 is greedy), got {args.temperature:g}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p:g}")
    if args.top_k is not None and args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0 (0 = no cut), got {args.top_k}")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if any(not s for s in args.stop):
        raise UsageError("--stop strings must not be empty")
    if args.timeout < 0:
        raise UsageError(f"--timeout must be >= 0 seconds, got {args.timeout:g}")


def _generate(args: argparse.Namespace) -> int:
    _check(args)
    from engineforge import progress

    from .client import EngineforgeClient
    from .lm_client import GeneratedPiece, collect

    with arguments_checked():
        tls = ClientTls.from_args(args.tls_ca, args.tls_cert, args.tls_key)
    streaming = (sys.stdout.isatty() if args.stream is None else args.stream) and not args.json

    def shown(pieces: Any) -> Any:
        piece: GeneratedPiece
        for piece in pieces:
            if streaming:
                sys.stdout.write(piece.text)
                sys.stdout.flush()
            yield piece

    with EngineforgeClient(args.url, timeout_s=args.timeout or REQUEST_TIMEOUT_S, retry=args.timeout > 0,
                           retry_s=args.timeout, tls=tls, log=progress.info, timeout_option="--timeout") as client:
        pieces = client.generate(args.prompt, model=args.model, max_tokens=args.max_tokens,
                                 temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                                 stop=args.stop or None)
        result = collect(args.prompt, shown(pieces))
    if args.json:
        speed = result.tokens_per_s
        print(json.dumps({"prompt": args.prompt, "text": result.text, "token_ids": result.token_ids,
                          "ttft_ms": None if result.ttft_s is None else round(result.ttft_s * 1000, 3),
                          "tokens_per_s": None if speed is None else round(speed, 2),
                          "finish_reason": result.finish_reason,
                          "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}))
    elif streaming:
        print()
    else:
        print(result.text)
    return 0
