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


def test_adapters_script_runs_every_group(capsys):
    """bench/adapters.py times each adapter beside its framework's loss (smoke test, tiny shape)."""
    import pytest

    pytest.importorskip("torch")
    pytest.importorskip("jax")
    path = SCRIPT.parent / "adapters.py"
    spec = importlib.util.spec_from_file_location("adapters_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--shapes", "64x10", "--repeat", "1"])
    out = capsys.readouterr().out
    for name in ("peer:F.cross_entropy", "torch:xsoftmax.torch", "jax:xsoftmax.jax"):
        assert name in out
