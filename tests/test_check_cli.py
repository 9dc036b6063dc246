"""``xsoftmax check``: its oracle is right, it passes here, and it catches a broken engine."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

import xsoftmax._engines.reference as reference_engine
from xsoftmax._cli import main
from xsoftmax._cli.check import (
    IGNORE,
    compare,
    engines_for,
    loss_inputs,
    oracle_log_softmax,
    oracle_logsumexp,
    oracle_softmax_loss,
    target_checks,
)
from xsoftmax._engines import ENGINES


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_oracle_agrees_with_torch(reduction, weighted, ignore, smoothing):
    """The oracle everything is judged against means what torch's cross_entropy means."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    s = rng.standard_normal((6, 4)) * 2
    y = rng.integers(0, 4, 6)
    if ignore:
        y[[1, 4]] = IGNORE
    w = rng.uniform(0.5, 2.0, 4) if weighted else None
    st = torch.tensor(s, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(
        st, torch.tensor(y), weight=None if w is None else torch.tensor(w),
        ignore_index=IGNORE, reduction=reduction, label_smoothing=smoothing,
    )
    loss.backward(torch.ones_like(loss))  # "none": ∂(Σ rows)/∂s, the per-row gradient
    want_loss, want_grad = oracle_softmax_loss(
        s, y, reduction=reduction, weight=w, ignore_index=IGNORE if ignore else None,
        label_smoothing=smoothing,
    )
    np.testing.assert_allclose(want_loss, loss.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(want_grad, st.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_oracle_primitives_and_stability():
    s = np.array([[1e4, -1e4, 1e4 - 1.0], [-np.inf, 0.0, -np.inf], [-np.inf, -np.inf, -np.inf]])
    lse = oracle_logsumexp(s)
    assert lse[0] == pytest.approx(1e4 + np.log1p(np.exp(-1.0)))
    assert lse[1] == 0.0 and lse[2] == -np.inf
    tail = np.log1p(np.exp(-1.0))
    np.testing.assert_allclose(oracle_log_softmax(s[:2]), [[-tail, -2e4 - tail, -1.0 - tail],
                                                            [-np.inf, 0.0, -np.inf]], rtol=1e-15)
    loss, grad = oracle_softmax_loss(s[:2], np.array([1, 1]), reduction="none")
    assert loss[0] == pytest.approx(2e4 + np.log1p(np.exp(-1.0)))
    assert loss[1] == 0.0 and np.all(np.isfinite(grad))


def test_oracle_all_rows_ignored_is_nan_loss_zero_gradient():
    loss, grad = oracle_softmax_loss(np.zeros((2, 3)), np.array([IGNORE, IGNORE]), ignore_index=IGNORE)
    assert math.isnan(float(loss)) and np.all(grad == 0)


def test_compare_matches_nonfinite_and_flags_mismatches():
    assert compare(np.array([np.nan, np.inf, 1.0]), np.array([np.nan, np.inf, 1.0]), "float64") == (0.0, 0.0)
    assert compare(np.array([np.inf]), np.array([1.0]), "float64")[1] == math.inf
    assert compare(np.array([1.0]), np.array([np.nan]), "float64")[1] == math.inf
    assert compare(np.zeros(3), np.zeros(4), "float64")[1] == math.inf
    err, ratio = compare(np.array([1.0 + 1e-3]), np.array([1.0]), "float32")
    assert err == pytest.approx(1e-3) and ratio > 1


def test_inputs_cover_the_adversarial_cases():
    sets = loss_inputs(0)
    names = {(s.name, s.dtype) for s in sets}
    for name in ("random", "logits ±1e4", "-inf mask", "N=1", "C=1"):
        assert (name, "float32") in names and (name, "float64") in names
    assert ("random", "float16") in names
    masked = next(s for s in sets if s.name == "-inf mask")
    assert np.isneginf(masked.scores).any()
    assert np.isfinite(masked.scores[np.arange(len(masked.y)), masked.y]).all()


def test_check_passes_on_numpy(capsys):
    assert main(["check", "--backends", "numpy"]) == 0
    out = capsys.readouterr().out
    for engine in engines_for("numpy"):
        assert any(line.split()[:2] == ["numpy", engine] and "PASS" in line for line in out.splitlines())
    assert "(layers)" in out and "(primitives)" in out and "FAIL" not in out


def _broken_engine_module(monkeypatch, break_fn) -> None:
    """Install a fused NumPy engine that is the reference engine with ``break_fn`` applied."""
    reference = reference_engine.softmax_loss
    module = types.ModuleType("xsoftmax_test_broken_engine")

    def softmax_loss(inp, *, out=None):
        return break_fn(*reference(inp, out=out))

    module.softmax_loss = softmax_loss
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(ENGINES, "numpy", module.__name__)


def _row(out: str, backend: str, engine: str) -> str:
    return next(line for line in out.splitlines() if line.split()[:2] == [backend, engine])


def test_check_fails_on_a_broken_fused_engine(monkeypatch, capsys):
    _broken_engine_module(monkeypatch, lambda loss, d: (loss, d * 1.001))  # 0.1 % off gradient
    assert main(["check", "--backends", "numpy"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in _row(out, "numpy", "fused")
    assert "PASS" in _row(out, "numpy", "reference")
    assert "FAIL numpy/fused/softmax_loss" in out


def test_check_fails_on_a_crashing_or_mistyped_engine(monkeypatch, capsys):
    def crash(loss, d):
        raise RuntimeError("kernel exploded")

    _broken_engine_module(monkeypatch, crash)
    assert main(["check", "--backends", "numpy", "--engines", "fused"]) == 1
    assert "raised RuntimeError: kernel exploded" in capsys.readouterr().out

    _broken_engine_module(monkeypatch, lambda loss, d: (loss, d.astype(np.float64)))
    assert main(["check", "--backends", "numpy", "--engines", "fused"]) == 1
    assert "expected float32" in capsys.readouterr().out

    _broken_engine_module(monkeypatch, lambda loss, d: (loss.tolist(), d))  # right values, not an array
    assert main(["check", "--backends", "numpy", "--engines", "fused", "-v"]) == 1
    assert "output must be an array" in capsys.readouterr().out


def test_check_fails_on_a_broken_reference(monkeypatch, capsys):
    """The oracle is independent of the library: a wrong reference engine is caught too."""
    reference = reference_engine.softmax_loss

    def off_by_smoothing(inp, *, out=None):
        loss, d = reference(inp, out=out)
        return (loss * 1.0001 if inp.label_smoothing else loss), d

    monkeypatch.setattr(reference_engine, "softmax_loss", off_by_smoothing)
    assert main(["check", "--backends", "numpy", "--engines", "reference"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in _row(out, "numpy", "reference") and "smoothing=0.1" in out


@pytest.mark.parametrize(
    ("broken", "case"),
    [
        (lambda inp: inp.z_loss > 0, "z_loss="),
        (lambda inp: inp.softcap is not None, "softcap="),
        (lambda inp: inp.y.ndim == 2, "probabilities"),
    ],
    ids=["z-loss", "softcap", "probabilities"],
)
def test_check_covers_the_issue_15_options(monkeypatch, capsys, broken, case):
    """An engine wrong only under one new option fails ``xsoftmax check``, naming a case with it."""
    reference = reference_engine.softmax_loss

    def off(inp, *, out=None):
        loss, d = reference(inp, out=out)
        return loss, (d * 1.001 if broken(inp) else d)

    monkeypatch.setattr(reference_engine, "softmax_loss", off)
    assert main(["check", "--backends", "numpy", "--engines", "reference", "-v"]) == 1
    failures = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL ")]
    assert failures and all(case in line for line in failures)


def test_target_checks_cover_kdim_and_every_option():
    cases = [c[0] for c in target_checks("numpy", "reference", 0)]
    for text in ("K-dim labels", "K-dim probabilities", "probabilities", "z_loss=", "softcap=", "-inf mask"):
        assert any(text in c for c in cases), text
    assert {r for r in ("mean", "sum", "none") if any(f"reduction={r}" in c for c in cases)} == {
        "mean", "sum", "none",
    }  # fmt: skip


def test_check_rejects_unknown_names(capsys):
    assert main(["check", "--backends", "numpy,tensorflow"]) == 2
    assert main(["check", "--engines", "turbo"]) == 2
    assert "tensorflow" in capsys.readouterr().err


def test_check_reports_unavailable_backends(monkeypatch, capsys):
    import xsoftmax as xs

    status = dict(xs.available_backends(), cupy="no CUDA device: pretend")
    monkeypatch.setattr(xs, "available_backends", lambda: status)
    assert main(["check", "--backends", "numpy,cupy", "--engines", "reference"]) == 0
    assert "skipped cupy: no CUDA device: pretend" in capsys.readouterr().out
