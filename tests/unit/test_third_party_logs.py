"""`progress.third_party_logs_to`: other libraries' log output goes to the build log, never to the console, also
when the library installs its console handler inside the block (transformers and torch do so on first import,
which a `build-engine` process reaches only while loading the checkpoint)."""

from __future__ import annotations

import logging
import sys

from engineforge import progress


def test_a_handler_installed_inside_the_block_prints_nothing_until_it_ends(tmp_path, capfd):
    log = tmp_path / "build.log"
    library = logging.getLogger("late_library_for_test")
    console = logging.StreamHandler(sys.stderr)
    with progress.third_party_logs_to(log):
        # What transformers' first import does: its own stderr handler, no propagation.
        library.addHandler(console)
        library.propagate = False
        library.warning("\x1b[1mBertModel LOAD REPORT\x1b[0m from: ckpt\npooler.dense.weight | MISSING")
        progress.info("load checkpoint done")
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.err + captured.out and "MISSING" not in captured.err
    assert "[engineforge] load checkpoint done" in captured.err  # the project's own lines still print
    text = log.read_text()
    assert "BertModel LOAD REPORT from: ckpt" in text and "pooler.dense.weight | MISSING" in text
    assert "\x1b[" not in text  # colour codes are for terminals
    # Afterwards the library prints as it asked to, and the log file is left alone.
    assert library.handlers == [console]
    library.warning("after the build")
    assert "after the build" in capfd.readouterr().err and "after the build" not in log.read_text()
    library.removeHandler(console)


def test_handlers_present_before_the_block_are_restored(tmp_path, capfd):
    library = logging.getLogger("early_library_for_test")
    console = logging.StreamHandler(sys.stderr)
    library.addHandler(console)
    library.propagate = False
    try:
        with progress.third_party_logs_to(tmp_path / "build.log"):
            library.warning("inside")
        assert library.handlers == [console] and logging.Logger.addHandler.__name__ == "addHandler"
        assert "inside" not in capfd.readouterr().err and "inside" in (tmp_path / "build.log").read_text()
    finally:
        library.removeHandler(console)
