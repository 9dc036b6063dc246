"""bench/small_calls.py runs and reports every shape (a smoke test: the timing itself is not asserted)."""

from __future__ import annotations

import importlib.util
import pathlib

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "small_calls.py"


def test_small_calls_script_prints_the_three_shapes(capsys):
    spec = importlib.util.spec_from_file_location("small_calls", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--repeat", "2", "--calls", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for shape in ("100x3", "256x10", "1024x10"):
        [row] = [line for line in lines if line.split()[:1] == [shape]]
        assert row.endswith("x") and float(row.split()[-1][:-1]) > 0
