"""Serve several build bundles side by side in one Triton, for comparisons and open-loop runs. Run on demand.

    .venv/bin/python benchmarks/serve_builds.py intent_fp32=artifacts/builds/intent-fp32 \\
        intent_int8=artifacts/builds/intent-int8 intent_fastcpu=artifacts/builds/intent-fast-cpu [--seconds 1800]

Each NAME=BUILD_DIR[@two-hop] is published (BUILD_DIR/engine; text_path one-hop unless @two-hop, the layout before
issue 21) as NAME (text) and NAME_engine (token ids), running NAME.v1.*, into
a temporary repository; the server's gRPC address is printed and written to reports/serve_builds.url, and the server
stays up until --seconds pass or Ctrl-C. Then, for example:

    .venv/bin/engineforge loadtest --url $(cat reports/serve_builds.url) \\
        --model intent_fp32,intent_int8,intent_fastcpu --concurrency 1,4 --duration 10 --out reports/compare
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engineforge.serve.repository import publish_engine  # noqa: E402
from engineforge.serve.server import TritonServer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", nargs="+", help="NAME=BUILD_DIR[@two-hop] (the directory build-engine wrote)")
    parser.add_argument("--seconds", type=float, default=1800)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        for item in args.builds:
            name, _, build = item.partition("=")
            build, _, layout = build.partition("@")
            if not build or layout not in ("", "one-hop", "two-hop"):
                parser.error(f"expected NAME=BUILD_DIR or NAME=BUILD_DIR@two-hop, got {item!r}")
            publish_engine(Path(build) / "engine", repo, name, text_path=layout or "one-hop")
        with TritonServer.serving(repo, log_file=Path(tmp) / "tritonserver.log") as server:
            url_file = ROOT / "reports" / "serve_builds.url"
            url_file.parent.mkdir(parents=True, exist_ok=True)
            url_file.write_text(server.grpc_url)
            print(server.grpc_url, flush=True)
            try:
                time.sleep(args.seconds)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
