"""``xsoftmax train``: the targets with the defaults, the JSON and PNG outputs, options."""

from __future__ import annotations

import json

import pytest

from xsoftmax import _cli as cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train(tmp_path, capsys, *args):
    out = tmp_path / "result.json"
    status = cli.main(["train", *args, "--json", str(out)])
    text = capsys.readouterr().out
    return status, json.loads(out.read_text()), text


def test_spiral_defaults_reach_98_percent(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "spiral.png"
    status, result, text = _train(tmp_path, capsys, "--data", "spiral", "--plot", str(png))
    assert status == 0
    assert result["train_accuracy"] >= 0.98
    assert result["shape"] == [2, 100, 3]
    assert result["backend"] == "numpy" and result["seconds"] > 0
    assert len(result["loss_history"]) == result["epochs"]  # full batch: one step per epoch
    assert result["loss_history"][-1] < 0.2 < result["loss_history"][0]
    assert png.read_bytes()[:8] == PNG_MAGIC
    # progress lines, then the summary
    assert 5 <= text.count("\n(Epoch ") <= 12 and 5 <= text.count("\n(Iteration ") <= 12  # about ten of each
    assert f"train accuracy {result['train_accuracy']:.3f}" in text.splitlines()[-1]


def test_iris_defaults_reach_93_percent_validation(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "iris.png"
    status, result, text = _train(tmp_path, capsys, "--data", "iris", "--plot", str(png))
    assert status == 0
    assert result["val_accuracy"] >= 0.93
    assert result["shape"] == [4, 6, 3]
    assert result["lr"] == 1e-2 and result["reg"] == 1e-3
    assert png.read_bytes()[:8] == PNG_MAGIC  # loss curve only: iris is 4-D


def test_options_override_defaults(tmp_path, capsys):
    status, result, text = _train(
        tmp_path, capsys, "--data", "spiral", "--hidden", "8", "--epochs", "4", "--batch-size", "100",
        "--update", "sgd_momentum", "--lr", "0.3", "--reg", "0", "--seed", "3", "--dtype", "float64",
        "--backend", "array_api_strict", "--quiet",
    )
    assert status == 0
    assert result["shape"] == [2, 8, 3] and result["update"] == "sgd_momentum"
    assert result["backend"] == "array_api_strict" and result["dtype"] == "float64"
    assert result["lr"] == 0.3 and result["reg"] == 0.0 and result["seed"] == 3
    assert len(result["loss_history"]) == 4 * 3
    assert len(result["val_acc_history"]) == 4 + 1  # the untrained model, then each epoch
    assert text.count("\n") == 1 and "array_api_strict" in text  # --quiet: the summary only


def test_same_seed_same_json_numbers(tmp_path, capsys):
    args = ("--data", "iris", "--epochs", "5", "--quiet")
    _, a, _ = _train(tmp_path, capsys, *args)
    _, b, _ = _train(tmp_path, capsys, *args)
    assert a["loss_history"] == b["loss_history"]
    _, c, _ = _train(tmp_path, capsys, *args, "--seed", "1")
    assert c["loss_history"] != a["loss_history"]


def test_unknown_backend_is_a_clear_error(capsys):
    assert cli.main(["train", "--backend", "nope", "--epochs", "1"]) == 2
    assert "backend must be one of" in capsys.readouterr().err


def test_bad_choice_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--data", "mnist"])
    assert "invalid choice" in capsys.readouterr().err


def test_plot_without_matplotlib_fails_before_training(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    out = tmp_path / "result.json"
    assert cli.main(["train", "--plot", str(tmp_path / "x.png"), "--json", str(out)]) == 2
    captured = capsys.readouterr()
    assert "pip install 'xsoftmax[plot]'" in captured.err
    assert "epoch" not in captured.out and not out.exists()  # nothing was trained
