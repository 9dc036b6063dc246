"""Every script in examples/ runs to completion, as a user would run it.

Scripts are found by globbing, so a new example is tested without editing
this file. A script is skipped (with the reason) when one of the modules it
imports is missing here, or when it imports a backend that cannot run here
(CuPy without a CUDA device); it runs in a subprocess, in a temporary
folder (files it writes go there), with a timeout.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import backend_status

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TIMEOUT_S = 300


def imported_modules(path: pathlib.Path) -> list[str]:
    """Absolute module names a script imports (``import a.b``, ``from a.b import c``), in order."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def missing_reason(path: pathlib.Path) -> str | None:
    """Why ``path`` cannot run here (a missing import, an unusable backend), or ``None``."""
    status = backend_status()
    for name in imported_modules(path):
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            return f"{path.name} imports {name}, which is not installed"
        top = name.split(".")[0]
        if top in status and status[top] != "ok":
            return f"{path.name} needs {top}: {status[top]}"
    return None


def test_examples_are_found():
    names = [p.name for p in EXAMPLES]
    assert "cs231n_walkthrough.py" in names and "backend_comparison.py" in names


def test_missing_imports_skip_the_script(tmp_path):
    script = tmp_path / "needs_a_module.py"
    script.write_text("import numpy\nfrom xsoftmax_no_such_module.sub import thing\n")
    expected = "needs_a_module.py imports xsoftmax_no_such_module.sub, which is not installed"
    assert missing_reason(script) == expected
    script.write_text("import numpy\nimport xsoftmax\n")
    assert missing_reason(script) is None


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    reason = missing_reason(path)
    if reason:
        pytest.skip(reason)
    path_dirs = [str(ROOT), os.environ.get("PYTHONPATH")]  # this checkout's xsoftmax first
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path_dirs)), MPLBACKEND="Agg")
    try:
        result = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{path.name} did not finish within {TIMEOUT_S} s")
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), f"{path.name} printed nothing"
