"""The package as a user meets it: its namespace, version, license and entry points."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import xsoftmax as xs

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_namespace_shows_only_the_api():
    # Submodules a user imported (xsoftmax.torch, xsoftmax.jax) become attributes too.
    public = [
        name for name in dir(xs)
        if not name.startswith("_") and getattr(getattr(xs, name), "__name__", "") != f"xsoftmax.{name}"
    ]
    assert sorted(xs.__all__) == xs.__all__
    assert set(public) <= set(xs.__all__), set(public) - set(xs.__all__)
    assert "annotations" not in dir(xs)


def test_version_is_the_installed_metadata():
    try:
        installed = metadata.version("xsoftmax")
    except metadata.PackageNotFoundError:
        pytest.skip("xsoftmax is not installed (run from a bare source tree)")
    assert xs.__version__ == installed
    declared = re.search(r'^version = "([^"]+)"', PYPROJECT, flags=re.MULTILINE)
    assert declared and installed == declared[1]


def test_license_file_matches_pyproject():
    assert re.search(r'^license = "BSD-3-Clause"$', PYPROJECT, flags=re.MULTILINE)
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 3-Clause License")
    assert "The xsoftmax developers" in text


def test_the_library_does_not_import_its_command_line():
    code = "import sys, xsoftmax; print(sorted(m for m in sys.modules if m.startswith('xsoftmax._cli')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_python_dash_m_runs_the_command():
    done = subprocess.run([sys.executable, "-m", "xsoftmax", "example"], capture_output=True, text=True,
                          check=True)
    assert "dscores  = [[0.2, -0.7, 0.5]]" in done.stdout
