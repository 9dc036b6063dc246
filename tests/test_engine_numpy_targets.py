"""The NumPy engine with probability targets, z-loss and softcap against the float64 oracle.

``xsoftmax/_engines/_numpy_extras.py``, called through the engine's
``softmax_loss`` with hand-built :class:`LossInputs`: every combination with
weights, ``ignore_index``, smoothing and the reductions; float16/32/64;
``out=`` (new, in place, strided, overlapping); strided (K-dimensional) views;
adversarial rows; the same bits on any thread count and block size; peak memory.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _oracle import oracle_softmax_loss

from xsoftmax._engines import _numpy_extras as extras
from xsoftmax._engines import numpy as engine
from xsoftmax._reduction import LossInputs

#: (rtol, atol as a fraction of the largest |oracle| value) by dtype.
TOL = {"float64": (1e-11, 1e-12), "float32": (2e-5, 2e-6), "float16": (4e-3, 2e-3)}

EXTRAS = [{"z_loss": 1e-2}, {"softcap": 3.0}, {"z_loss": 0.1, "softcap": 2.5}]
LABEL_OPTS = [{}, {"weight": True}, {"ignore_index": 1}, {"label_smoothing": 0.2},
              {"weight": True, "ignore_index": 0, "label_smoothing": 0.3}]  # fmt: skip
PROB_OPTS = [{}, {"weight": True}, {"label_smoothing": 0.2}, {"weight": True, "label_smoothing": 1.0}]


def _problem(n, c, *, probabilities, opts, dtype=np.float32, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal((n, c)) * scale).astype(dtype)
    kw = dict(opts)
    if kw.get("weight") is True:
        kw["weight"] = rng.uniform(0.1, 2.0, c).astype(dtype)
    if probabilities:
        y = rng.random((n, c)).astype(dtype)  # need not sum to 1
    else:
        y = rng.integers(0, c, n)
        if "ignore_index" in kw and n > 1:
            y[rng.random(n) < 0.3] = kw["ignore_index"]
    return scores, y, kw


def _inputs(scores, y, **kw):
    return LossInputs(
        np, scores, y, kw.get("weight"), kw.get("ignore_index"), kw.get("label_smoothing", 0.0),
        kw.get("reduction", "mean"), False, kw.get("denom"), "numpy", z_loss=kw.get("z_loss", 0.0),
        softcap=kw.get("softcap"), zdenom=kw.get("zdenom"),
    )  # fmt: skip


def _run(scores, y, *, out=None, num_threads=None, block_rows=None, **kw):
    inp = _inputs(scores, y, **kw)
    return engine.softmax_loss(inp, out=out, num_threads=num_threads, block_rows=block_rows)


def _oracle(scores, y, **kw):
    y64 = y.astype(np.float64) if np.issubdtype(y.dtype, np.floating) else y
    w = kw.get("weight")
    return oracle_softmax_loss(
        scores.astype(np.float64), y64, reduction=kw.get("reduction", "mean"),
        weight=None if w is None else w.astype(np.float64), ignore_index=kw.get("ignore_index"),
        label_smoothing=kw.get("label_smoothing", 0.0), z_loss=kw.get("z_loss", 0.0),
        softcap=kw.get("softcap"),
    )  # fmt: skip


def _close(actual, expected, dtype):
    rtol, atol = TOL[np.dtype(dtype).name]
    expected = np.asarray(expected, dtype=np.float64)
    finite = expected[np.isfinite(expected)]
    scale = float(np.max(np.abs(finite))) if finite.size else 1.0
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol * scale)


def _check(scores, y, dtype=np.float32, **kw):
    loss, d = _run(scores, y, **kw)
    ref_loss, ref_d = _oracle(scores, y, **kw)
    assert d.dtype == scores.dtype and d.shape == scores.shape
    assert np.asarray(loss).dtype == scores.dtype
    _close(loss, ref_loss, dtype)
    _close(d, ref_d, dtype)


CASES = [(False, o, e) for o, e in itertools.product(LABEL_OPTS, EXTRAS)] + [
    (True, o, e) for o, e in itertools.product(PROB_OPTS, [{}, *EXTRAS])
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("probabilities", "opts", "extra"), CASES)
def test_matches_oracle(probabilities, opts, extra, dtype):
    for reduction, (n, c) in zip(("mean", "sum", "none"), ((37, 11), (64, 300), (5, 2)), strict=True):
        scores, y, kw = _problem(n, c, probabilities=probabilities, opts=opts, dtype=dtype)
        _check(scores, y, dtype, reduction=reduction, **kw, **extra)


@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_float16(probabilities, reduction):
    opts = {"weight": True, "label_smoothing": 0.1}
    scores, y, kw = _problem(50, 33, probabilities=probabilities, opts=opts, dtype=np.float16, seed=3)
    _check(scores, y, np.float16, reduction=reduction, z_loss=1e-3, softcap=5.0, **kw)
    # probabilities of another floating dtype than the scores: cast per block
    if probabilities:
        _check(scores, y.astype(np.float64), np.float16, reduction=reduction, z_loss=1e-3, **kw)


@pytest.mark.parametrize("mode", ["new", "in_place", "fortran", "overlap"])
@pytest.mark.parametrize("probabilities", [False, True])
def test_out(mode, probabilities):
    kw = {"z_loss": 0.05, "softcap": 4.0, "label_smoothing": 0.1}
    scores, y, w = _problem(40, 17, probabilities=probabilities, opts={"weight": True}, seed=5)
    kw.update(w)
    ref_loss, ref_d = _oracle(scores, y, **kw)
    if mode == "new":
        out = np.full_like(scores, np.nan)
        loss, d = _run(scores.copy(), y, out=out, **kw)
        assert d is out
    elif mode == "in_place":  # the softcap factor is kept before the scores are overwritten
        s = scores.copy()
        loss, d = _run(s, y, out=s, **kw)
        assert d is s
    elif mode == "fortran":
        out = np.empty(scores.shape[::-1], scores.dtype).T
        loss, d = _run(scores.copy(), y, out=out, num_threads=3, block_rows=7, **kw)
        assert d is out
    else:  # `out` overlaps other rows of the scores
        buf = np.empty((41, 17), scores.dtype)
        buf[1:] = scores
        loss, d = _run(buf[1:], y, out=buf[:-1], num_threads=2, block_rows=4, **kw)
        assert d.base is buf
    _close(loss, ref_loss, np.float32)
    _close(d, ref_d, np.float32)


@pytest.mark.parametrize("probabilities", [False, True])
def test_strided_k_dim_views(probabilities):
    """Per-sample views of (N, C, d) scores: rows of class stride d, as the public layer passes them."""
    rng = np.random.default_rng(7)
    n, c, dd = 3, 9, 13
    s3 = (rng.standard_normal((n, c, dd)) * 3).astype(np.float32)
    y3 = rng.random((n, c, dd)).astype(np.float32) if probabilities else rng.integers(0, c, (n, dd))
    kw = {"z_loss": 0.02, "softcap": 2.0, "label_smoothing": 0.1, "reduction": "none"}
    out3 = np.full_like(s3, np.nan)
    for i in range(n):
        view = s3[i].T  # (d, C), class stride d
        yv = y3[i].T if probabilities else y3[i]
        assert view.strides[1] == dd * s3.itemsize
        loss, d = _run(view, yv, out=out3[i].T, **kw)
        assert d.base is out3
        ref_loss, ref_d = _oracle(np.ascontiguousarray(view), np.ascontiguousarray(yv), **kw)
        _close(loss, ref_loss, np.float32)
    ref_loss, ref_d = _oracle(s3, y3, **kw)
    _close(out3, ref_d, np.float32)


@pytest.mark.parametrize("probabilities", [False, True])
def test_blocks_of_a_batch(probabilities):
    """Two halves with the whole batch's D and V (as the Dask engine calls): the whole batch's loss."""
    opts = {} if probabilities else {"weight": True, "ignore_index": 2}
    scores, y, kw = _problem(60, 8, probabilities=probabilities, opts=opts, seed=9)
    kw.update(z_loss=0.1, softcap=3.0)
    whole, d = _run(scores, y, **kw)
    ref_loss, ref_d = _oracle(scores, y, **kw)
    if probabilities:
        denom = zdenom = np.asarray(60.0, np.float32)
    else:
        valid = y != 2
        denom = np.asarray(kw["weight"][y[valid]].sum(), np.float32)
        zdenom = np.asarray(valid.sum(), np.float32)
    parts = [_run(scores[a:b], y[a:b], denom=denom, zdenom=zdenom, **kw) for a, b in ((0, 25), (25, 60))]
    _close(whole, ref_loss, np.float32)
    _close(parts[0][0] + parts[1][0], ref_loss, np.float32)
    _close(np.concatenate([parts[0][1], parts[1][1]]), ref_d, np.float32)


def test_adversarial_rows():
    s = np.array(
        [[1e4, -1e4, 0.0, 3.0], [-np.inf, 2.0, 1.0, -np.inf], [5.0, 5.0, 5.0, 5.0], [-1e4, -1e4, 1e4, 0.5]],
        np.float32,
    )  # fmt: skip
    y = np.array([1, 2, 0, 3])
    # softcap 80: rows shifted by their maximum (c log2 e + log2 C > 100); the others: unshifted
    for kw in ({"softcap": 7.0, "z_loss": 0.1}, {"softcap": 1.0, "label_smoothing": 0.3}, {"softcap": 80.0}):
        loss, d = _run(s, y, **kw)
        assert np.isfinite(loss) and np.isfinite(d).all()
        _check(s, y, **kw)
    # −inf masks without softcap: +inf loss with smoothing, NaN where q = 0 meets −inf (torch's 0 · inf)
    for kw in ({"z_loss": 0.1}, {"z_loss": 0.1, "label_smoothing": 0.2}):
        _check(s[1:3].astype(np.float64), y[1:3], np.float64, **kw)
    q = np.array([[0.0, 0.5, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]])
    loss, d = _run(s[1:3].astype(np.float64), q, z_loss=0.1, reduction="none")
    ref_loss, ref_d = _oracle(s[1:3].astype(np.float64), q, z_loss=0.1, reduction="none")
    assert np.isnan(loss[0]) and np.isnan(ref_loss[0])
    _close(loss, ref_loss, np.float64)
    _close(d, ref_d, np.float64)
    assert np.isfinite(d).all()
    # an all −inf row: NaN, as the oracle
    loss, d = _run(np.full((1, 3), -np.inf), np.array([0]), z_loss=0.1, reduction="none")
    assert np.isnan(loss).all() and np.isnan(d).all()


@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_small_shapes(probabilities, reduction):
    kw = {"z_loss": 0.3, "softcap": 2.0, "label_smoothing": 0.1, "reduction": reduction}
    for n, c in ((1, 1), (1, 5), (4, 1), (0, 3)):
        scores, y, _ = _problem(n, c, probabilities=probabilities, opts={}, dtype=np.float64, seed=n + c)
        loss, d = _run(scores, y, **kw)
        ref_loss, ref_d = _oracle(scores, y, **kw)
        assert d.shape == (n, c)
        if n == 0 and reduction == "mean":
            assert np.isnan(loss)
        else:
            _close(loss, ref_loss, np.float64)
            _close(d, ref_d, np.float64)


def test_all_rows_ignored():
    scores, y, kw = _problem(6, 4, probabilities=False, opts={"weight": True}, dtype=np.float64)
    y[:] = -100
    for reduction in ("mean", "sum", "none"):
        loss, d = _run(scores, y, ignore_index=-100, reduction=reduction, z_loss=0.5, softcap=2.0, **kw)
        assert np.all(d == 0)
        if reduction == "mean":
            assert np.isnan(loss)
        else:
            assert np.all(loss == 0)


def test_same_bits_any_threads_and_blocks():
    for probabilities in (False, True):
        extra = {"label_smoothing": 0.1} if probabilities else {"ignore_index": 3}
        opts = {"weight": True, **extra}
        scores, y, kw = _problem(9000, 40, probabilities=probabilities, opts=opts, seed=11)
        kw.update(z_loss=1e-3, softcap=6.0)
        for reduction in ("mean", "none"):
            runs = [
                _run(scores, y, num_threads=t, block_rows=b, reduction=reduction, **kw)
                for t, b in ((1, None), (2, None), (3, None), (3, 1), (2, 777), (1, 9000))
            ]
            for loss, d in runs[1:]:
                assert np.array_equal(loss, runs[0][0], equal_nan=True)
                assert np.array_equal(d, runs[0][1])


def test_inputs_not_modified():
    scores, y, kw = _problem(30, 12, probabilities=True, opts={"weight": True}, seed=2)
    copies = [a.copy() for a in (scores, y, kw["weight"])]
    _run(scores, y, z_loss=0.1, softcap=2.0, label_smoothing=0.1, **kw)
    for a, b in zip((scores, y, kw["weight"]), copies, strict=True):
        assert np.array_equal(a, b)


def test_plain_calls_keep_the_tuned_path(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a plain call reached _numpy_extras")

    monkeypatch.setattr(extras, "softmax_loss_extras", refuse)
    scores, y, kw = _problem(20, 6, probabilities=False, opts={"weight": True, "label_smoothing": 0.1})
    _run(scores, y, **kw)
    with pytest.raises(AssertionError, match="reached"):
        _run(scores, y, z_loss=0.1, **kw)


@pytest.mark.parametrize(
    ("probabilities", "dtype", "threads"),
    [(False, np.float32, 2), (True, np.float32, 4), (True, np.float64, 1), (True, np.float16, 2)],
)
def test_peak_memory(probabilities, dtype, threads):
    """Peak extra memory (tracemalloc) at most 1.1x the gradient, every new option on."""
    from xsoftmax._cli.timing import peak_bytes

    opts = {"weight": True, "label_smoothing": 0.1}
    scores, y, kw = _problem(4096, 600, probabilities=probabilities, opts=opts, dtype=dtype, seed=23)
    kw.update(z_loss=1e-3, softcap=5.0)
    _run(scores[:10], y[:10], num_threads=threads, **kw)
    peak = peak_bytes(lambda: _run(scores, y, num_threads=threads, **kw))
    assert peak <= 1.1 * scores.nbytes, peak / scores.nbytes


@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("shape", [(6, 5), (3, 7, 4, 5), (2, 4, 9)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_public_api_fused(monkeypatch, probabilities, shape, reduction):
    """``xs.softmax_loss(..., engine="fused")`` (K-dim: per-sample strided views) runs this path."""
    import xsoftmax as xs

    calls = []
    real = extras.softmax_loss_extras
    monkeypatch.setattr(extras, "softmax_loss_extras", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(13)
    c = shape[1]
    s = (rng.standard_normal(shape) * 3).astype(np.float32)
    y = rng.random(shape).astype(np.float32) if probabilities else rng.integers(0, c, (shape[0], *shape[2:]))
    kw = {"reduction": reduction, "z_loss": 0.01, "softcap": 2.0, "label_smoothing": 0.1,
          "weight": rng.uniform(0.5, 2.0, c).astype(np.float32)}  # fmt: skip
    if not probabilities:
        kw["ignore_index"] = 1
    ref_loss, ref_d = _oracle(s, y, **kw)
    loss, d = xs.softmax_loss(s, y, engine="fused", **kw)
    assert calls
    _close(loss, ref_loss, np.float32)
    _close(d, ref_d, np.float32)
    s2 = s.copy()
    loss, d = xs.softmax_loss(s2, y, engine="fused", out=s2, **kw)
    _close(loss, ref_loss, np.float32)
    _close(s2, ref_d, np.float32)


def test_first_use_from_many_threads():
    """Threads that ask for the engine while another is still importing it wait for it (Dask blocks do)."""
    import subprocess
    import sys

    code = (
        "import threading, numpy as np\n"
        "from xsoftmax._engines import select_engine\n"
        "from xsoftmax._reduction import LossInputs\n"
        "s, y = np.zeros((2, 3)), np.array([0, 1])\n"
        "inp = LossInputs(np, s, y, None, None, 0.0, 'sum', False, None, 'numpy')\n"
        "barrier, errors = threading.Barrier(8), []\n"
        "def go():\n"
        "    barrier.wait()\n"
        "    try:\n"
        "        select_engine('numpy', 'fused')(inp)\n"
        "    except Exception as e:\n"
        "        errors.append(repr(e))\n"
        "threads = [threading.Thread(target=go) for _ in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "assert not errors, errors\n"
    )
    for _ in range(3):
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
