"""The user's layout (build/, serve/, loadtest/ at the top) installs as one `engineforge` namespace."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import venv
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


# What setuptools' warnings look like in pip's output (pip's own notices are "WARNING:").
SETUPTOOLS_NOISE = re.compile(r"Warning|!!|experimental|absent from the `packages`|site-packages/setuptools/")


def _setuptools_build_dirs() -> set[str]:
    """What setuptools leaves in build/ when its build_base is not redirected (build/lib, build/bdist.*)."""
    return {p.name for p in (ROOT / "build").iterdir() if p.name == "lib" or p.name.startswith("bdist.")}


def test_fresh_editable_install_prints_no_setuptools_warning(tmp_path):
    # The project's own pip (the newest, as `make venv` installs) shows the build backend's warnings even
    # with --quiet; a fresh venv's bundled pip would hide them. Build isolation as a user gets it.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-cache-dir", "-e",
         str(ROOT)], capture_output=True, text=True, timeout=300,
    )
    output = out.stdout + out.stderr
    assert out.returncode == 0, output
    assert not SETUPTOOLS_NOISE.search(output), output
    # The editable install maps the three folders and ships the demo data; no top-level `build` appears.
    code = ("import importlib.resources as r, importlib.util as u, engineforge.build.files, engineforge.serve,"
            " engineforge.loadtest, engineforge.demo;"
            "print(engineforge.build.files.__file__, engineforge.serve.__file__, engineforge.loadtest.__file__);"
            "print(r.files('engineforge.demo.data').joinpath('train.jsonl').is_file(), u.find_spec('build'))")
    run = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    paths, checks = run.stdout.splitlines()
    assert paths.split() == [str(ROOT / "build" / "files.py"), str(ROOT / "serve" / "__init__.py"),
                             str(ROOT / "loadtest" / "__init__.py")]
    assert checks == "True None"


@pytest.mark.slow
def test_wheel_contains_and_imports_the_namespace(tmp_path):
    before = _setuptools_build_dirs()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(ROOT)], check=True, capture_output=True,
    )
    # setup.cfg's build_base keeps setuptools' own build tree out of our build/ package.
    assert _setuptools_build_dirs() <= before
    wheel = next(tmp_path.glob("engineforge-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("engineforge/build/cli.py", "engineforge/serve/triton/engine_model.py",
                     "engineforge/loadtest/runner.py", "engineforge/serve/triton_gate.c",
                     *(f"engineforge/demo/data/{p.name}" for p in (ROOT / "engineforge/demo/data").glob("*.jsonl"))):
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
