"""What every demo does after its checkpoint is ready: build (the preset's candidate ladder), publish, serve,
check served answers against the same engine in-process, load-test, and write the summary report."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engineforge import progress


def build_and_publish(settings: Any, checkpoint: Path, task: str | None = None, **data: Path) -> Any:
    """Build the preset (its candidates, most aggressive first), publish the chosen one to the demo repository
    and return its report. `data`: eval_data, train_data, calibration_data, unlabelled_data."""
    from engineforge.commands.build_engine import build_engine

    return build_engine(checkpoint, preset=settings.preset, output_dir=settings.build_dir, data=data,
                        publish={"repo_dir": str(settings.repo_dir), "model_name": settings.model_name},
                        overwrite=True, task=task)


def serve_check_and_load(settings: Any, build: Any, texts_file: Path, check: Callable[..., list[dict[str, Any]]],
                         samples: int, stage: str) -> tuple[list[dict[str, Any]], Any, dict[str, str]]:
    """Start Triton on the demo repository, `check(url, model, bundle, texts)` a few texts, load-test the
    ensemble with every text of `texts_file`, stop Triton. Returns (samples, load-test result, report paths)."""
    from engineforge.loadtest.config import LoadTestConfig
    from engineforge.loadtest.payloads import load_labelled_texts
    from engineforge.loadtest.report_files import write_reports
    from engineforge.loadtest.runner import run_loadtest
    from engineforge.serve.server import TritonServer

    # Labelled eval texts (the intent demo's) have every served answer checked: the load table's `correct %`.
    texts, labels = load_labelled_texts(texts_file, labels_required=False)
    settings.report_dir.mkdir(parents=True, exist_ok=True)
    server = TritonServer.serving(settings.repo_dir, log_file=settings.report_dir / "tritonserver.log")
    with progress.stage(f"{stage} start Triton"):
        server.start()
    try:
        checked = check(server.grpc_url, settings.model_name, Path(str(build.bundle_dir)), texts[:samples])
        with progress.stage(f"{stage} load test"):
            load = run_loadtest(LoadTestConfig(
                model=settings.model_name, url=server.grpc_url, mode="text", concurrency=settings.concurrency,
                duration_s=settings.duration_s, warmup_s=settings.warmup_s, texts=tuple(texts),
                labels=tuple(labels or ()), texts_source=str(texts_file), label=settings.preset))
            paths = write_reports(load, settings.report_dir, stem="loadtest")
    finally:
        server.stop()
    return checked, load, {k: str(v) for k, v in paths.items()}


def write_summary(settings: Any, summary: dict[str, Any], render: Callable[[dict[str, Any], str], str],
                  load: Any) -> dict[str, Any]:
    from engineforge.loadtest.markdown_report import markdown_table

    summary["markdown"] = render(summary, markdown_table(load))
    (settings.report_dir / "summary.md").write_text(summary["markdown"])
    (settings.report_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    progress.info(f"demo reports in {settings.report_dir}/ (summary.md, loadtest.md/.json/.png)")
    return summary


def program() -> str:
    """How to run engineforge again from here: `engineforge` when the shell finds this one, else its path
    (`make demo` runs .venv/bin/engineforge, which is not on PATH until the venv is activated)."""
    script = Path(sys.argv[0])
    if script.name != "engineforge":
        return "engineforge"
    found = shutil.which("engineforge")
    if found and Path(found).resolve() == script.resolve():
        return "engineforge"
    try:
        return str(script.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(script.resolve())


def next_steps(repo: Path, model: str, example: str, keep_serving: bool) -> str:
    """The demo's last lines: the exact commands that serve and query what it built."""
    run = program()
    query = f"  {run} infer --model {shlex.quote(model)} {shlex.quote(example)}"
    if keep_serving:
        return "\n".join([f"Serving {repo} until Ctrl-C (`{run} serve --repo {shlex.quote(str(repo))}`); "
                          "query it from another terminal:", query])
    return "\n".join(["Serve and query what the demo built (the demo stopped its server; `--keep-serving` leaves "
                      "one running):", f"  {run} serve --repo {shlex.quote(str(repo))}",
                      "  # then, in another terminal:", query])


def keep_serving(repo: Path) -> int:
    """`engineforge serve --repo REPO` in the foreground, exactly as that command runs, until Ctrl-C."""
    from engineforge.serve import cli as serve_cli

    parser = argparse.ArgumentParser(prog="engineforge")
    serve_cli.add_parsers(parser.add_subparsers())
    args = parser.parse_args(["serve", "--repo", str(repo)])
    return int(args.func(args))
