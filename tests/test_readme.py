"""The README's examples run, and print what the README shows.

Each ```python block runs, in order, in one namespace, as a reader pasting
them into one session would. Where a block shows a result in a comment line
(``# loss = 1.2039728 (= -log 0.3), dscores = [[0.2, -0.7, 0.5]]``), the
variable, rounded to the digits shown, must equal the value shown. The Dask
block starts a LocalCluster of its own, so it runs as a script in a
subprocess, at a small size. The ``xsoftmax train`` output lines are compared
with what the command prints now, all but the time.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xsoftmax as xs
from xsoftmax._cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

#: ``name = value`` in a comment line: a number or a (nested) list of numbers.
SHOWN = re.compile(r"\b(?P<name>[A-Za-z_]\w*) = (?P<value>\[[-+\d.eE,\s\[\]]*\]|[-+]?\d[\d.eE+-]*)")
#: the time at the end of a ``xsoftmax train`` summary line
SECONDS = re.compile(r", \d+(\.\d+)? s$")


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks of ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)


def shown_values(code: str) -> list[tuple[str, str]]:
    """``(name, value text)`` for every ``name = value`` in a whole-line comment of ``code``."""
    found = []
    for line in code.splitlines():
        text = line.strip()
        if text.startswith("#"):
            found += [(m["name"], m["value"]) for m in SHOWN.finditer(text)]
    return found


def decimals(value: str) -> int:
    """The most digits after a decimal point in ``value`` (what the README rounds to)."""
    return max((len(d) for d in re.findall(r"\.(\d+)", value)), default=0)


def test_the_readme_has_the_blocks_this_file_checks():
    python = blocks("python")
    assert len(python) >= 3, "expected the NumPy, torch and Dask examples"
    assert sum("LocalCluster" in b for b in python) == 1
    assert shown_values(python[0]), "the first example shows its results in a comment"


def test_python_examples_print_what_they_show():
    namespace: dict = {"__name__": "readme_example"}
    compared = 0
    for code in blocks("python"):
        if "LocalCluster" in code:
            continue  # test_dask_example
        for module in ("torch", "jax", "cupy"):
            if f"import {module}" in code and importlib.util.find_spec(module) is None:
                pytest.skip(f"a README example needs {module}, which is not installed")
        exec(compile(code, "README.md", "exec"), namespace)
        for name, value in shown_values(code):
            assert name in namespace, f"the README shows {name} = {value}, but no example defines {name}"
            actual = np.round(np.asarray(xs.to_numpy(namespace[name]), dtype=np.float64), decimals(value))
            np.testing.assert_array_equal(actual, np.asarray(ast.literal_eval(value)),
                                          err_msg=f"README shows {name} = {value}")
            compared += 1
    assert compared >= 2  # the loss and the gradient of the first example


@pytest.mark.distributed
def test_dask_example_runs_at_a_small_size(tmp_path):
    pytest.importorskip("distributed")
    (code,) = [b for b in blocks("python") if "LocalCluster" in b]
    # 100_000 x 1_000 in chunks of 25_000 rows -> 2_000 x 10 in chunks of 500.
    small = code
    for big, little in (("100_000", "2_000"), ("25_000", "500"), ("1_000", "10")):
        assert re.search(rf"\b{big}\b", small), f"the Dask example no longer uses {big}"
        small = re.sub(rf"\b{big}\b", little, small)
    script = tmp_path / "dask_example.py"
    script.write_text(small, encoding="utf-8")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)  # the workers import this xsoftmax too
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    loss = float(done.stdout.strip().splitlines()[-1])
    # Standard-normal logits over 10 classes: the mean loss is near log 10 + 1/2.
    assert 2.0 < loss < 4.0


@pytest.mark.parametrize("data", ["spiral", "iris"])
def test_train_prints_the_readme_summary(data, capsys):
    shown = [line for line in README.splitlines() if line.startswith(f"{data} ") and " on numpy: " in line]
    assert len(shown) == 1, f"the README should show one {data} summary line"
    assert main(["train", "--data", data, "--quiet"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert SECONDS.search(printed) and SECONDS.search(shown[0])
    assert SECONDS.sub("", printed) == SECONDS.sub("", shown[0])
