"""The user's layout (build/, serve/, loadtest/ at the top) installs as one `engineforge` namespace."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_editable_install_maps_the_top_level_folders():
    import engineforge.build
    import engineforge.loadtest
    import engineforge.serve

    assert Path(engineforge.build.__file__).parent == ROOT / "build"
    assert Path(engineforge.serve.__file__).parent == ROOT / "serve"
    assert Path(engineforge.loadtest.__file__).parent == ROOT / "loadtest"


def test_no_top_level_build_module_is_installed(tmp_path):
    # Run from an empty directory so the repository root is not on sys.path.
    code = "import importlib.util as u; s = u.find_spec('build'); print(s.origin if s else 'none')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert str(ROOT / "build") not in out.stdout


@pytest.mark.slow
def test_wheel_contains_and_imports_the_namespace(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(ROOT)], check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("engineforge-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("engineforge/build/cli.py", "engineforge/serve/triton/engine_model.py",
                     "engineforge/loadtest/runner.py", "engineforge/demo/data/train.jsonl"):
        assert expected in names
    assert not any(n.startswith(("build/", "serve/", "loadtest/", "tests/")) for n in names)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import engineforge.build.cli, engineforge.serve.repository, engineforge.loadtest.runner, sys;"
            "print(engineforge.build.cli.__file__)")
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(target))


@pytest.mark.parametrize("script", ["build-engine", "engineforge"])
def test_console_scripts_answer_help(script):
    exe = Path(sys.executable).parent / script
    assert importlib.util.find_spec("engineforge.cli") is not None
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout
