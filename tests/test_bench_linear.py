"""``xsoftmax bench --linear D``: rows, the memory gap between fused and unfused, the plot."""

from __future__ import annotations

import json

import pytest

from xsoftmax._cli import main


def test_bench_linear_rows_and_memory(tmp_path, capsys):
    path = tmp_path / "linear.json"
    argv = ["bench", "--linear", "16", "--shapes", "4096x300", "--repeat", "1", "--json", str(path)]
    assert main(argv) == 0
    rows = {r["case"]: r for r in json.loads(path.read_text())["linear"]}
    assert {"fused", "unfused"} <= set(rows)
    logits = 4096 * 300 * 4
    assert rows["unfused"]["time_ratio"] == 1.0
    # The unfused path holds the logits and their gradient; the fused one a chunk of 1/16.
    assert rows["unfused"]["peak_extra"] >= logits
    assert rows["fused"]["peak_extra"] <= logits / 8
    assert rows["fused"]["rss_extra"] is not None and rows["unfused"]["rss_extra"] is not None
    assert "fused" in capsys.readouterr().out


def test_bench_linear_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "linear.png"
    argv = ["bench", "--linear", "8", "--shapes", "300x50,300x100", "--repeat", "1", "--plot", str(png)]
    assert main(argv) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_linear_rejects_bad_d():
    assert main(["bench", "--linear", "0", "--shapes", "10x10"]) == 2
