"""PEP 517 build backend: setuptools' own, minus one informational message.

setuptools ends every editable install of a `package-dir` layout with an `InformationOnly` box
("Editable installation. ... folders in your working directory with the same name as your package may
take precedence"), which pip prints like a warning. Our layout needs `package-dir` (build/, serve/ and
loadtest/ map into `engineforge`), and no setting avoids the box: only a single-root layout gets a plain
.pth file, `editable_mode=strict` prints it too (and links into build/), and `editable_mode=compat` puts
the repository root on sys.path, where our build/ would shadow PyPA's `build`. So this filters exactly
that message; every other setuptools warning still reaches the user.
"""

from __future__ import annotations

import warnings

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (
    build_sdist,
    build_wheel,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)
from setuptools.warnings import InformationOnly

__all__ = [
    "build_editable",
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_editable",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable",
    "prepare_metadata_for_build_wheel",
]


def build_editable(wheel_directory: str, config_settings: dict | None = None,
                   metadata_directory: str | None = None) -> str:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Editable installation", category=InformationOnly)
        return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
