"""`engineforge serve` and `engineforge infer` sub-commands (registered by the top-level CLI).

Heavy imports (tritonclient, numpy) happen inside the run functions so `engineforge --help` is fast.
Exit codes as for every engineforge command (engineforge.cli_support.exit_code): 0 done, 1 failure, 2 usage
error, 130 interrupted; `serve` runs until Ctrl-C or SIGTERM, drains, and exits 130.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from engineforge.cli_support import arguments_checked, run_command
from engineforge.defaults import DEFAULT_GRPC_URL, DEFAULT_REPO
from engineforge.errors import UsageError
from engineforge.grpc_channel import ClientTls, add_tls_arguments

INFER_TIMEOUT_S = 10.0  # a call's deadline, retries included: how long `infer` waits for a server to come up
REQUEST_TIMEOUT_S = 30.0  # one request's deadline under --timeout 0 (no retries)


def add_parsers(subparsers: Any) -> None:
    """Register `serve` and `infer`; each parser gets `func` set to its run function."""
    serve = subparsers.add_parser("serve", help="run Triton on a model repository until Ctrl-C")
    serve.add_argument("--repo", default=DEFAULT_REPO, help="Triton model repository (default: %(default)s)")
    serve.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port (default: %(default)s)")
    serve.add_argument("--http-port", type=int, default=8000, help="(default: %(default)s)")
    serve.add_argument("--metrics-port", type=int, default=8002, help="(default: %(default)s)")
    serve.add_argument("--log-file", default=None, help="server log (default: a temporary file, printed)")
    serve.add_argument("--load-model", action="append", default=[],
                       help="serve only this model (repeat; default: every model in the repository)")
    serve.add_argument("--startup-timeout", type=float, default=120.0, help="seconds (default: %(default)s)")
    serve.add_argument("--bind", default="127.0.0.1",
                       help="interface to listen on; 0.0.0.0 = all, only by explicit choice (default: %(default)s)")
    serve.add_argument("--control-key-file", default=None,
                       help="where to write the key that model control needs (default: beside the server log)")
    serve.add_argument("--tls-cert", default=None, help="PEM server certificate: serve gRPC over TLS")
    serve.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", default=None, help="PEM CA: require client certificates it signed (mTLS)")
    serve.add_argument("--drain-timeout", type=float, default=30.0,
                       help="on SIGTERM / Ctrl-C: seconds accepted requests may take to finish while new ones get "
                            "UNAVAILABLE (like Kubernetes' terminationGracePeriodSeconds; default: %(default)s)")
    serve.set_defaults(func=run_serve)

    infer = subparsers.add_parser("infer", help="classify texts or token ids with a running server")
    infer.add_argument("texts", nargs="*", help="texts to classify through the ensemble")
    infer.add_argument("--url", default=DEFAULT_GRPC_URL, help="Triton gRPC address (default: %(default)s)")
    infer.add_argument("--model", default=None,
                       help="published model name (default: the only model the server serves; see --repo)")
    infer.add_argument("--repo", default=DEFAULT_REPO,
                       help="without --model: the repository the server serves, read for its models (the server's "
                            "own list needs the control key; default: %(default)s)")
    infer.add_argument(
        "--token-ids", action="append", default=[], metavar="1,2,3",
        help="one sequence of token ids (repeat for a batch); sent to <model>_engine",
    )  # fmt: skip
    infer.add_argument("--json", action="store_true", help="print JSON instead of a table")
    infer.add_argument("--timeout", type=float, default=INFER_TIMEOUT_S,
                       help="seconds each call may take, retries included: a server still starting or a model "
                            "reloading is waited for that long; 0 = no retries, fail at once when nothing answers "
                            "(default: %(default)s)")
    add_tls_arguments(infer)
    infer.set_defaults(func=run_infer)


def run_serve(args: argparse.Namespace) -> int:
    from engineforge.grpc_channel import TlsFiles

    from .serve_command import serve_forever

    def serve() -> int:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise UsageError("--tls-cert and --tls-key go together")
        tls = None
        if args.tls_cert:
            tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca, mutual=bool(args.tls_client_ca))
        return serve_forever(
            args.repo,
            key_file=args.control_key_file,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            log_file=args.log_file,
            load_models=tuple(args.load_model),
            startup_timeout_s=args.startup_timeout,
            bind=args.bind,
            tls=tls,
            drain_timeout_s=args.drain_timeout,
        )

    return run_command("engineforge serve", serve)


def parse_token_ids(rows: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Parse "1,2,3" strings into (ids, attention mask), right-padded with id 0 / mask 0 to the longest row."""
    ids = []
    for row in rows:
        try:
            ids.append([int(part) for part in row.replace(" ", "").split(",") if part])
        except ValueError as exc:
            raise UsageError(f"--token-ids {row!r} is not a comma-separated list of integers") from exc
        if not ids[-1]:
            raise UsageError(f"--token-ids {row!r} holds no ids")
    longest = max(len(r) for r in ids)
    mask = [[1] * len(r) + [0] * (longest - len(r)) for r in ids]
    return [r + [0] * (longest - len(r)) for r in ids], mask


def format_table(inputs: list[str], predictions: list[Any]) -> str:
    labels = list(predictions[0].probabilities) if predictions else []
    header = ["input", "label", *labels]
    rows = [
        [text if len(text) <= 40 else text[:37] + "...", p.label, *(f"{p.probabilities[n]:.4f}" for n in labels)]
        for text, p in zip(inputs, predictions, strict=True)
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def _print_embeddings(client: Any, args: argparse.Namespace, token_rows: Any) -> int:
    """Embedding models: one row per input with the dimension, the L2 norm and the first values."""
    import numpy as np

    if token_rows is not None:
        embeddings, inputs = client.embed_token_ids(*token_rows, model=args.model), args.token_ids
    else:
        embeddings, inputs = client.embed(args.texts, model=args.model), args.texts
    if args.json:
        print(json.dumps([{"input": text, "embedding": [round(float(v), 6) for v in row]}
                          for text, row in zip(inputs, embeddings, strict=True)], indent=2))
        return 0
    rows = [[text if len(text) <= 60 else text[:57] + "...", str(len(row)), f"{float(np.linalg.norm(row)):.4f}",
             " ".join(f"{v:+.3f}" for v in row[:4]) + " ..."] for text, row in zip(inputs, embeddings, strict=True)]
    header = ["input", "dim", "norm", "embedding"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]))
    return 0


def _print_entities(client: Any, args: argparse.Namespace) -> int:
    """Token classifiers: the entities of each text (simple aggregation), or JSON with every strategy's."""
    if not args.texts:
        raise UsageError("a token classifier takes texts (entities need character offsets), not --token-ids")
    found = {s: client.entities(args.texts, model=args.model, strategy=s) for s in ("simple", "first", "max")}
    if args.json:
        print(json.dumps([{"input": text, "entities": {s: found[s][i] for s in found}}
                          for i, text in enumerate(args.texts)], indent=2))
        return 0
    for i, text in enumerate(args.texts):
        print(text)
        for entity in found["simple"][i] or [{"label": "-", "text": "(no entities)", "start": "", "end": "",
                                              "score": None}]:
            score = f"{entity['score']:.3f}" if entity["score"] is not None else ""
            print(f"  {entity['label']:<12} {entity['text']!s:<30} {entity['start']}..{entity['end']}  {score}")
    return 0


def run_infer(args: argparse.Namespace) -> int:
    return run_command("engineforge infer", lambda: _infer(args))


def _infer(args: argparse.Namespace) -> int:
    if bool(args.texts) == bool(args.token_ids):
        raise UsageError("give either texts or --token-ids (not both, not neither)")
    token_rows = parse_token_ids(args.token_ids) if args.token_ids else None
    from engineforge import progress

    from .client import EngineforgeClient

    with arguments_checked():
        tls = ClientTls.from_args(args.tls_ca, args.tls_cert, args.tls_key)
    if args.timeout < 0:
        raise UsageError(f"--timeout must be >= 0 seconds, got {args.timeout:g}")
    with EngineforgeClient(args.url, timeout_s=args.timeout or REQUEST_TIMEOUT_S, retry=args.timeout > 0,
                           retry_s=args.timeout, tls=tls, log=progress.info, timeout_option="--timeout") as client:
        if args.model is None:
            from .infer_model import pick_model

            args.model = pick_model(client, Path(args.repo))
        from engineforge.engines.engine_spec import EMBEDDINGS, TOKEN_CLASSIFICATION

        task = client.task(args.model)
        if task == EMBEDDINGS:
            return _print_embeddings(client, args, token_rows)
        if task == TOKEN_CLASSIFICATION:
            return _print_entities(client, args)
        if token_rows is not None:
            predictions = client.classify_token_ids(*token_rows, model=args.model)
            inputs = args.token_ids
        else:
            predictions = client.classify(args.texts, model=args.model)
            inputs = args.texts
    if args.json:
        payload = [
            {"input": text, "label": p.label, "probabilities": p.probabilities}
            for text, p in zip(inputs, predictions, strict=True)
        ]
        print(json.dumps(payload, indent=2))
    else:
        print(format_table(inputs, predictions))
    return 0
