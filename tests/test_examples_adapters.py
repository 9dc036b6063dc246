"""The adapter examples run as a user runs them, and their loss falls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("script", "library"), [("torch_train_step.py", "torch"), ("jax_train_step.py", "jax")]
)
def test_example_runs_and_learns(script, library):
    pytest.importorskip(library)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)], env=env, capture_output=True, text=True,
        timeout=300, check=True,
    ).stdout
    losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("step")]
    assert len(losses) == 4, out
    assert losses[-1] < 0.5 * losses[0], out
