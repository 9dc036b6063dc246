"""The NumPy engine (xsoftmax/_engines/numpy.py) against the reference engine and float64.

Every option of ``softmax_loss`` on random and adversarial inputs; bitwise
equality across thread counts and block sizes; ``out=`` (also in place);
inputs never modified, read-only inputs accepted; dispatch of "auto"/"fused".
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xsoftmax as xs
from xsoftmax._engines import numpy as engine
from xsoftmax._engines import select_engine
from xsoftmax._engines._numpy_rows import store
from xsoftmax._validate import check_loss_inputs

from _helpers import TOLERANCES

# The reference engine warns on NaN rows (0/0, log 0); this engine does not
# (test_no_warnings), so those warnings only come from the comparisons.
pytestmark = pytest.mark.filterwarnings(
    "ignore::RuntimeWarning:xsoftmax._engines.reference|xsoftmax._reduction"
)

OPTIONS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"weight": True},
    {"ignore_index": 1},
    {"label_smoothing": 0.1},
    {"weight": True, "ignore_index": 0, "label_smoothing": 0.25},
    {"weight": True, "label_smoothing": 1.0, "reduction": "sum"},
    {"weight": True, "ignore_index": 2, "reduction": "none", "label_smoothing": 0.05},
]


def _ids(opts: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in opts.items()) or "plain"


def _problem(n, c, dtype=np.float32, *, opts=(), seed=0, scale=3.0):
    """``(scores, y, kwargs)`` with labels hitting ``ignore_index`` on some rows."""
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal((n, c)) * scale).astype(dtype)
    y = rng.integers(0, c, n)
    kw = dict(opts)
    if kw.get("weight") is True:
        kw["weight"] = rng.uniform(0.1, 2.0, c).astype(dtype)
    if "ignore_index" in kw and n > 1:
        y[rng.random(n) < 0.3] = kw["ignore_index"]
    return scores, y, kw


def _run(scores, y, *, out=None, num_threads=None, block_rows=None, **kw):
    """The NumPy engine called directly, with its thread and block knobs."""
    inp = check_loss_inputs(
        scores,
        y,
        reduction=kw.get("reduction", "mean"),
        weight=kw.get("weight"),
        ignore_index=kw.get("ignore_index"),
        label_smoothing=kw.get("label_smoothing", 0.0),
        engine="fused",
    )
    return engine.softmax_loss(inp, out=out, num_threads=num_threads, block_rows=block_rows)


def _float64(scores, y, *, reduction="mean", weight=None, ignore_index=None, label_smoothing=0.0):
    r"""Loss and gradient in float64, straight from the definition (finite scores).

    Row loss ``(1−ε) w_y (lse − s_y) + ε/C Σ_k w_k (lse − s_k)``, gradient
    ``(1−ε) w_y (p − 1[k=y]) + ε/C (W p − w)``, divided by ``Σ v_i w_{y_i}``
    for "mean"; ignored rows count 0.
    """
    s = np.asarray(scores, dtype=np.float64)
    n, c = s.shape
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    valid = np.ones(n, bool) if ignore_index is None else y != ignore_index
    ys = np.where(valid, y, 0)
    m = s.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(s - m).sum(axis=1, keepdims=True))
    p = np.exp(s - lse)
    eps, wy = label_smoothing, w[ys] * valid
    rows = (1 - eps) * wy * (lse[:, 0] - s[np.arange(n), ys])
    rows += eps / c * ((lse - s) * w).sum(axis=1) * valid
    hot = np.zeros_like(s)
    hot[np.arange(n), ys] = 1.0
    grad = (1 - eps) * wy[:, None] * (p - hot) + eps / c * (w.sum() * p - w) * valid[:, None]
    if reduction == "none":
        return rows, grad
    if reduction == "sum":
        return rows.sum(), grad
    return rows.sum() / wy.sum(), grad / wy.sum()


def _close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOLERANCES[np.dtype(dtype).name]
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), expected, rtol=rtol * scale, atol=atol * scale
    )


def _same_bits(a, b):
    """Bitwise equal (NaN where NaN), same dtype and shape."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def _same_results(a, b):
    """``(loss, dscores)`` pairs bitwise equal."""
    _same_bits(a[0], b[0])
    _same_bits(a[1], b[1])


def _same_everywhere(scores, y, configs, *, block_rows, **kw):
    """One thread in blocks of ``block_rows``, and the same bits for every ``(threads, block)``."""
    expected = _run(scores, y, num_threads=1, block_rows=block_rows, **kw)
    for threads, block in configs:
        _same_results(_run(scores, y, num_threads=threads, block_rows=block, **kw), expected)
    return expected


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("opts", OPTIONS, ids=_ids)
@pytest.mark.parametrize("n,c", [(37, 5), (23, 48), (19, 49), (9, 300), (1, 7), (6, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_matches_float64_and_reference(n, c, dtype, opts):
    if c == 1 and opts.get("ignore_index", 0) >= 1:
        pytest.skip("ignore_index is not below C = 1")
    scores, y, kw = _problem(n, c, dtype, opts=opts)
    loss, d = _run(scores, y, num_threads=2, block_rows=4, **kw)
    ref_loss, ref_d = xs.softmax_loss(scores, y, engine="reference", **kw)
    assert d.dtype == scores.dtype and d.shape == scores.shape
    assert np.asarray(loss).dtype == scores.dtype
    assert np.shape(loss) == np.shape(ref_loss)
    if all(y == kw.get("ignore_index")) and kw.get("reduction", "mean") == "mean":
        assert np.isnan(loss)
    else:
        expected_loss, expected_d = _float64(scores, y, **kw)
        _close(loss, expected_loss, dtype)
        _close(d, expected_d, dtype)
    _close(loss, np.asarray(ref_loss, np.float64), dtype)
    _close(d, ref_d.astype(np.float64), dtype)


@pytest.mark.parametrize("opts", OPTIONS, ids=_ids)
@pytest.mark.parametrize("c", [6, 200])
def test_large_logits(c, opts):
    """±1e4 logits: nothing overflows; the loss is lse − s_y, never log(softmax)."""
    scores, y, kw = _problem(40, c, np.float32, opts=opts, seed=1, scale=1e4)
    loss, d = _run(scores, y, num_threads=3, block_rows=7, **kw)
    expected_loss, expected_d = _float64(scores, y, **kw)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(d))
    # float32 logits of size 1e4 are spaced ~1e-3 apart: so is the loss.
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(d, expected_d, rtol=1e-5, atol=1e-6)
    ref_loss, ref_d = xs.softmax_loss(scores, y, engine="reference", **kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(d, ref_d, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("opts", OPTIONS, ids=_ids)
@pytest.mark.parametrize("c", [8, 120])
def test_masking_with_minus_inf(c, opts):
    """−inf logits get probability 0; an all −inf row gives NaN where the reference does."""
    scores, y, kw = _problem(30, c, np.float32, opts=opts, seed=2)
    rng = np.random.default_rng(3)
    mask = rng.random(scores.shape) < 0.4
    mask[np.arange(30), y % c] = False  # the target stays visible
    scores[mask] = -np.inf
    scores[5] = -np.inf  # one row with nothing left
    scores[7, :] = 1e4
    scores[7, 1:] = -np.inf
    loss, d = _run(scores, y, num_threads=2, block_rows=3, **kw)
    ref_loss, ref_d = xs.softmax_loss(scores, y, engine="reference", **kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(d, ref_d, rtol=2e-5, atol=2e-6)
    masked = np.isneginf(scores) & ~np.isnan(d)  # row 5 is all NaN
    masked[np.arange(30), y % c] = False  # row 7's target is masked: its gradient is −1
    if kw.get("label_smoothing", 0) == 0:
        assert np.all(d[masked] == 0)


@pytest.mark.parametrize("c", [1, 3, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("top", [0.0, 12.0, 16.0, 17.0, -30.0, 300.0])
def test_confident_rows_keep_their_small_loss(top, dtype, c):
    """A row whose target dominates has a loss near 0: computed to its own precision.

    ``top`` places the maximum (the target) inside and outside the range of
    rows computed unshifted (``SUM_RANGE``). C = 1 gives exactly 0; a
    confident row's loss ``log(1 + Σ_k e^{s_k − s_y})`` is within a few
    units of rounding of 1 (``log`` of a number next to 1, as in the
    reference engine), however large the logits.
    """
    n = 6
    rng = np.random.default_rng(21)  # the others 9 to 14 below the target
    scores = (top - rng.uniform(9.0, 14.0, (n, c))).astype(dtype)
    y = rng.integers(0, c, n)
    scores[np.arange(n), y] = top
    loss, d = _run(scores, y, reduction="none", num_threads=2, block_rows=4)
    # float64, relative to s_y (exact differences): lse − s_y and p without their cancellation
    s = scores.astype(np.float64)
    e = np.exp(s - s[np.arange(n), y][:, None])  # e_y = 1 exactly
    expected = np.log1p(e.sum(axis=1) - 1.0)
    expected_d = e / e.sum(axis=1, keepdims=True)
    expected_d[np.arange(n), y] -= 1.0
    assert np.all(loss >= 0)
    if c == 1:
        assert np.all(loss == 0) and np.all(d == 0)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(loss, expected, rtol=64 * eps, atol=8 * eps)
    # p: a few units of rounding of exp(s_k − m) (m up to ~16 here); p − 1: those of 1
    np.testing.assert_allclose(d, expected_d, rtol=64 * eps, atol=48 * eps)


@pytest.mark.parametrize("c", [7, 300])
@pytest.mark.parametrize("opts", OPTIONS, ids=_ids)
def test_shifted_and_unshifted_rows_in_one_block(c, opts):
    """Rows computed unshifted and rows shifted by their maximum, side by side.

    Whether a row is shifted depends on that row alone: the same bits for
    every block size and thread count, and reference values either way.
    """
    scores, y, kw = _problem(40, c, np.float32, opts=opts, seed=22)
    scores[::3] += 40.0  # overflow the unshifted sum: shifted
    scores[1::7] -= 200.0  # underflow it: shifted
    scores[2::9] *= 9.0  # some rows just in range, some out
    expected = _same_everywhere(scores, y, [(1, 1), (2, 3), (3, 7), (2, 16)], block_rows=40, **kw)
    ref_loss, ref_d = _float64(scores, y, **kw)
    _close(expected[0], ref_loss, np.float32)
    _close(expected[1], ref_d, np.float32)


@pytest.mark.parametrize("opts", OPTIONS, ids=_ids)
def test_targets_far_below_the_row(opts):
    """Rows whose ``σ / e_y`` overflows, or whose ``e_y`` is subnormal, beside ordinary rows.

    Such rows take ``l = log σ``, ``t = s_y`` instead of ``log(σ / e_y)``; the
    choice is the row's own, so a row gets the same bits alone and in any
    block, and the values are the float64 ones.
    """
    scores, y, kw = _problem(12, 5, np.float32, opts=opts, seed=24)
    rows = np.arange(12)
    scores[3] = 16.0  # Σ_k exp(s_k) ≈ 4 e^16 > 2^24: shifted by 16,
    scores[3, y[3]] = -80.0  # and then e_y = exp(−96) is subnormal
    scores[5] = 0.0
    scores[5, (y[5] + 1) % 5] = 16.0  # σ ≈ 8.9e6, in range: unshifted
    scores[5, y[5]] = -87.0  # e_y ≈ 1.6e-38 is normal, σ / e_y overflows
    scores[8, y[8]] = -100.0  # e_y = exp(-100): subnormal
    expected = _same_everywhere(scores, y, [(1, 1), (2, 5), (1, 12)], block_rows=3, **kw)
    ref_loss, ref_d = _float64(scores, y, **kw)
    _close(expected[0], ref_loss, np.float32)
    _close(expected[1], ref_d, np.float32)
    kw_i = dict(kw, reduction="none")
    batch = _run(scores, y, num_threads=1, block_rows=4, **kw_i)
    for i in rows:  # each row alone: the same bits as in the batch
        alone = _run(scores[i : i + 1], y[i : i + 1], num_threads=1, **kw_i)
        _same_bits(alone[0], batch[0][i : i + 1])
        _same_bits(alone[1], batch[1][i : i + 1])


@pytest.mark.parametrize("opts", OPTIONS, ids=_ids)
def test_one_block_of_a_task_redone(opts):
    """A task of many blocks in which one row needs a shift and others cannot have one.

    The task redoes only the block of the shifted row; the other blocks keep
    their first pass, and their row sums and target terms, untouched by the
    redo. A NaN row and an all −inf row are out of range but have no finite
    maximum to shift by: their blocks are not redone, and they come out as
    in the reference engine (NaN).
    """
    scores, y, kw = _problem(64, 300, np.float32, opts=opts, seed=23)
    scores[37] += 500.0  # overflows unshifted: shifted, its block redone
    expected = _same_everywhere(scores, y, [(1, 4), (2, 5), (1, 64)], block_rows=4, **kw)
    ref_loss, ref_d = _float64(scores, y, **kw)
    _close(expected[0], ref_loss, np.float32)
    _close(expected[1], ref_d, np.float32)

    scores[50, 7] = np.nan
    scores[10] = -np.inf
    kw["reduction"] = "none"
    loss, d = _same_everywhere(scores, y, [(1, 4), (2, 3), (1, 64)], block_rows=4, **kw)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ref_loss, ref_d = xs.softmax_loss(scores, y, engine="reference", **kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=2e-6, equal_nan=True)
    np.testing.assert_allclose(d, ref_d, rtol=2e-5, atol=2e-6, equal_nan=True)
    valid = np.ones(64, bool) if "ignore_index" not in kw else y != kw["ignore_index"]
    assert np.isnan(d[50]).all() and np.isnan(d[10]).all()
    assert np.isnan(loss[50]) == valid[50] and np.isnan(loss[10]) == valid[10]


@pytest.mark.parametrize("weighted", [False, True])
def test_smoothing_sums_with_masked_and_huge_logits(weighted):
    """Label smoothing where the target is masked (−inf) or logits reach ±3e38.

    The smoothing sum ``Σ_k w_k (s_k − shift)`` must come out as the
    reference engine's: ``inf`` loss for a masked target, finite for
    finite logits however large (``s log2 e`` overflows past 2.4e38).
    """
    rows = [
        [-np.inf, 0.0, 1.0],  # masked target
        [-1e38, 0.0, 1.0],
        [-3e38, 0.0, 1.0],
        [0.0, -3e38, 1.0],  # huge non-target
        [1.0, 2.0, -np.inf],  # masked non-target: inf smoothing term
        [3e38, -3e38, 0.0],
        [0.5, 0.25, 0.0],  # an ordinary row in the same block
    ]
    scores = np.array(rows, np.float32)
    y = np.array([0, 0, 0, 0, 1, 0, 2])
    kw = {"label_smoothing": 0.1, "reduction": "none"}
    if weighted:
        kw["weight"] = np.array([0.5, 2.0, 1.0], np.float32)
    loss, d = _run(scores, y, num_threads=2, block_rows=3, **kw)
    ref_loss, ref_d = xs.softmax_loss(scores, y, engine="reference", **kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(d, ref_d, rtol=2e-5, atol=2e-6)
    one = _run(scores, y, num_threads=1, block_rows=7, **kw)
    _same_results((loss, d), one)


@pytest.mark.parametrize("c", [4, 100])
def test_nan_and_inf_propagate_like_the_reference(c):
    scores, y, _ = _problem(8, c, np.float32, seed=4)
    scores[2, 1] = np.nan
    scores[4, 0] = np.inf
    loss, d = _run(scores, y, reduction="none", num_threads=2, block_rows=3)
    ref_loss, ref_d = xs.softmax_loss(scores, y, engine="reference", reduction="none")
    np.testing.assert_array_equal(np.isnan(loss), np.isnan(ref_loss))
    np.testing.assert_array_equal(np.isnan(d), np.isnan(ref_d))
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5)


def test_zero_weight_mean_is_nan_like_the_reference():
    """``D = Σ w_{y_i} = 0`` with rows kept: NaN loss and NaN gradient on kept rows."""
    scores, y, _ = _problem(8, 4, seed=13)
    y[:] = [0, 0, 1, 1, 2, 0, 1, 2]
    weight = np.array([0.0, 0.0, 0.0, 1.0], np.float32)
    loss, d = _run(scores, y, weight=weight, ignore_index=2, num_threads=2, block_rows=3)
    ref_loss, ref_d = xs.softmax_loss(scores, y, weight=weight, ignore_index=2, engine="reference")
    np.testing.assert_array_equal(loss, ref_loss)
    np.testing.assert_array_equal(d, ref_d)
    assert np.isnan(loss) and np.all(d[y == 2] == 0)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("c", [5, 100])
def test_no_warnings(c):
    """NaN rows (all −inf, NaN logits) and "mean" over no rows are results, not warnings."""
    for opts in OPTIONS:
        scores, y, kw = _problem(12, c, opts=opts, seed=14)
        scores[2] = -np.inf
        scores[3, 0] = np.nan
        scores[4, 1] = np.inf
        _run(scores, y, num_threads=2, block_rows=5, **kw)
        _run(scores.astype(np.float16), y, num_threads=2, block_rows=5, **kw)
    y[:] = 1
    _run(scores, y, ignore_index=1)


def test_every_row_ignored():
    scores, y, _ = _problem(6, 5, seed=5)
    y[:] = 3
    for reduction in ("mean", "sum", "none"):
        loss, d = _run(scores, y, ignore_index=3, reduction=reduction, num_threads=2, block_rows=2)
        ref_loss, ref_d = xs.softmax_loss(
            scores, y, ignore_index=3, reduction=reduction, engine="reference"
        )
        np.testing.assert_array_equal(loss, ref_loss)  # NaN for "mean", zeros otherwise
        np.testing.assert_array_equal(d, np.zeros_like(d))


@pytest.mark.parametrize(
    "label_dtype", [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64]
)
def test_label_dtypes(label_dtype):
    scores, y, _ = _problem(20, 9, seed=6)
    loss, d = _run(scores, y.astype(label_dtype))
    ref_loss, ref_d = _run(scores, y.astype(np.int64))
    _same_results((loss, d), (ref_loss, ref_d))


@pytest.mark.parametrize(
    "layout",
    ["transposed", "strided", "negative-strides", "fortran"],
)
@pytest.mark.parametrize("c", [5, 70])
def test_non_contiguous_scores(layout, c):
    base, y, kw = _problem(24, c, seed=7, opts={"weight": True, "label_smoothing": 0.1})
    if layout == "transposed":
        scores = np.ascontiguousarray(base.T).T
    elif layout == "strided":
        big = np.zeros((48, 3 * c), np.float32)
        big[::2, ::3] = base
        scores = big[::2, ::3]
    elif layout == "negative-strides":
        scores = np.ascontiguousarray(base[::-1, ::-1])[::-1, ::-1]
    else:
        scores = np.asfortranarray(base)
    assert not scores.flags.c_contiguous
    loss, d = _run(scores, y, num_threads=2, block_rows=5, **kw)
    ref_loss, ref_d = _run(base, y, num_threads=1, **kw)
    _same_results((loss, d), (ref_loss, ref_d))
    assert d.flags.c_contiguous


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("opts", OPTIONS, ids=_ids)
@pytest.mark.parametrize("c", [1, 3, 48, 49, 130])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_bitwise_identical_across_threads_and_blocks(c, dtype, opts, monkeypatch):
    """Thread count and block size never change a bit.

    Block sizes cover blocks of one row, N not a multiple of the block, a
    block boundary inside a run of rows sharing one label, one block. The
    loss is summed in chunks of 5 rows here, so blocks cut chunks too.
    """
    monkeypatch.setattr(engine, "CHUNK_ROWS", 5)
    n = 29
    scores, y, kw = _problem(n, c, dtype, opts=opts, seed=8)
    if c > 1 and "ignore_index" not in kw:
        y[9:17] = c - 1  # rows 9..16 share a label; blocks of 4 and 6 cut the run
    expected = _same_everywhere(
        scores, y, itertools.product((1, 2, 3), (1, 4, 6, 28, n, 1000)), block_rows=n, **kw
    )
    _same_results(_run(scores, y, **kw), expected)  # default threads and blocks


@pytest.mark.parametrize("c", [1000, 8200, 20001])
def test_long_rows_single_row_blocks(c):
    """Row sums of long rows (einsum) do not depend on the rows beside them.

    Blocks of one row take another code path than blocks of several; rows
    longer than NumPy's 8192-element buffer are where a 1-D sum would differ.
    """
    scores, y, kw = _problem(7, c, opts={"label_smoothing": 0.1}, seed=12, scale=30.0)
    expected = _same_everywhere(
        scores, y, [(1, 1), (2, 1), (1, 2), (3, 3), (2, 4)], block_rows=7, **kw
    )
    ref_loss, ref_d = xs.softmax_loss(scores, y, engine="reference", **kw)
    np.testing.assert_allclose(expected[0], ref_loss, rtol=2e-5)
    np.testing.assert_allclose(expected[1], ref_d, rtol=2e-4, atol=1e-9)


@pytest.mark.parametrize("opts", OPTIONS, ids=_ids)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_small_c_blocks(dtype, opts):
    """Short rows: blocks and tasks cut anywhere, same bits."""
    n, c = 3000, 10
    scores, y, kw = _problem(n, c, dtype, opts=opts, seed=13)
    expected = _same_everywhere(
        scores, y, [(2, 1), (3, 7), (2, 1024), (1, 2999), (2, None)], block_rows=n, **kw
    )
    ref_loss, ref_d = xs.softmax_loss(scores, y, engine="reference", **kw)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(expected[0], ref_loss, **tol)
    np.testing.assert_allclose(
        np.asarray(expected[1], np.float32), np.asarray(ref_d, np.float32), **tol
    )


@pytest.mark.parametrize("c", [10, 64])
def test_many_blocks_and_chunks(c):
    """Real chunk size, several chunks, blocks aligned or not with them."""
    n = 2 * engine.CHUNK_ROWS + 123
    scores, y, kw = _problem(n, c, opts={"weight": True, "label_smoothing": 0.1}, seed=9)
    one = _same_everywhere(
        scores, y, [(2, None), (3, 1000), (2, engine.CHUNK_ROWS), (3, 777)], block_rows=n, **kw
    )
    ref_loss, ref_d = xs.softmax_loss(scores, y, engine="reference", **kw)
    np.testing.assert_allclose(one[0], ref_loss, rtol=2e-5)
    np.testing.assert_allclose(one[1], ref_d, rtol=2e-5, atol=2e-7)


# --------------------------------------------------------------------------- out=, inputs


@pytest.mark.parametrize("c", [6, 90])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_out_buffer_and_in_place(c, dtype):
    scores, y, kw = _problem(21, c, dtype, opts={"weight": True, "label_smoothing": 0.2}, seed=10)
    loss, d = _run(scores, y, num_threads=2, block_rows=4, **kw)

    out = np.full_like(scores, 7)
    loss2, d2 = _run(scores, y, out=out, num_threads=2, block_rows=4, **kw)
    assert d2 is out
    _same_bits(loss2, loss)
    _same_bits(d2, d)

    in_place = scores.copy()
    loss3, d3 = _run(in_place, y, out=in_place, num_threads=3, block_rows=5, **kw)
    assert d3 is in_place
    _same_bits(loss3, loss)
    _same_bits(in_place, d)

    public = scores.copy()
    loss4, d4 = xs.softmax_loss(public, y, out=public, **kw)
    assert d4 is public
    _same_bits(loss4, loss)
    _same_bits(public, d)


@pytest.mark.parametrize("opts", OPTIONS, ids=_ids)
@pytest.mark.parametrize("c", [5, 300])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_in_place_with_rows_the_task_reads_again(c, dtype, opts):
    """``out=scores`` where a task reads its scores after its blocks.

    Rows that need a shift (σ out of range) and targets far below the row
    maximum (the ``log σ − s_y`` formula, smoothing sums from the scores):
    their blocks must not be stored over the scores before that, or the
    gradient is NaN and the loss silently wrong. The same bits as a
    separate output, for every thread count and block size.
    """
    scores, y, kw = _problem(24, c, dtype, opts=opts, seed=25)
    rows = np.arange(24)
    scores[::4] += dtype(60.0)  # σ overflows unshifted: shifted
    scores[1::6] -= dtype(200.0)  # σ underflows: shifted
    far = rows[2::5]
    scores[far] = 0
    scores[far, (y[far] + 1) % c] = 8.0
    scores[far, y[far]] = -60.0 if dtype == np.float16 else -95.0  # e_y subnormal (or 0)
    expected = _run(scores, y, num_threads=1, block_rows=24, **kw)
    ref_loss, ref_d = _float64(scores, y, **kw)
    _close(expected[0], ref_loss, dtype)
    _close(expected[1], ref_d, dtype)
    for threads, block in [(1, 24), (2, 1), (3, 5), (2, None)]:
        in_place = scores.copy()
        loss, d = _run(in_place, y, out=in_place, num_threads=threads, block_rows=block, **kw)
        assert d is in_place
        _same_results((loss, d), expected)


@pytest.mark.parametrize("c", [6, 90])
def test_out_non_contiguous_and_overlapping(c):
    scores, y, kw = _problem(16, c, seed=11)
    loss, d = _run(scores, y, **kw)

    fortran = np.asfortranarray(np.zeros_like(scores))
    _, d2 = _run(scores, y, out=fortran, num_threads=2, block_rows=3, **kw)
    assert d2 is fortran
    _same_bits(np.ascontiguousarray(d2), d)

    # `out` = the scores' rows in reverse order: blocks must not see each
    # other's output where they expect scores.
    work = scores.copy()
    reversed_rows = work[::-1]
    _, d3 = _run(work, y, out=reversed_rows, num_threads=2, block_rows=3, **kw)
    assert d3 is reversed_rows
    _same_bits(np.ascontiguousarray(d3), d)


@pytest.mark.parametrize("c", [6, 90])
def test_inputs_untouched_and_read_only(c):
    opts = {"weight": True, "ignore_index": 0, "label_smoothing": 0.1}
    scores, y, kw = _problem(15, c, opts=opts, seed=12)
    copies = scores.copy(), y.copy(), kw["weight"].copy()
    for a in (scores, y, kw["weight"]):
        a.setflags(write=False)
    loss, d = _run(scores, y, num_threads=2, block_rows=4, **kw)
    xs.softmax_loss(scores, y, **kw)
    for a, copy in zip((scores, y, kw["weight"]), copies, strict=True):
        _same_bits(a, copy)
    assert d.flags.writeable


def test_empty_batch():
    scores = np.zeros((0, 4), np.float32)
    y = np.zeros(0, np.int64)
    for reduction in ("mean", "sum", "none"):
        loss, d = _run(scores, y, reduction=reduction, num_threads=3)
        ref_loss, _ = xs.softmax_loss(scores, y, reduction=reduction, engine="reference")
        np.testing.assert_array_equal(loss, ref_loss)
        assert d.shape == (0, 4)


# --------------------------------------------------------------------------- dispatch, knobs


def test_auto_and_fused_pick_this_engine(monkeypatch):
    assert select_engine("numpy", "auto") is engine.softmax_loss
    assert select_engine("numpy", "fused") is engine.softmax_loss
    calls = []
    real = engine.softmax_loss

    def spy(inp, *, out=None):
        calls.append(out)
        return real(inp, out=out)

    monkeypatch.setattr(engine, "softmax_loss", spy)
    scores, y, _ = _problem(4, 3)
    xs.softmax_loss(scores, y)
    xs.softmax_loss(scores, y, engine="fused")
    assert len(calls) == 2
    xs.softmax_loss(scores, y, engine="reference")
    assert len(calls) == 2


def test_numpy_state_left_alone():
    """Worker threads tune NumPy's ufunc buffer; the caller's setting is restored."""
    before = np.getbufsize(), np.geterr()
    scores, y, _ = _problem(64, 500)
    _run(scores, y, num_threads=1, block_rows=8)
    _run(scores, y, num_threads=3, block_rows=8)
    assert (np.getbufsize(), np.geterr()) == before


def test_thread_count_setting(monkeypatch):
    monkeypatch.delenv(engine.NUM_THREADS_ENV, raising=False)
    import os

    assert engine.default_num_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv(engine.NUM_THREADS_ENV, "3")
    assert engine.default_num_threads() == 3
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv(engine.NUM_THREADS_ENV, bad)
        with pytest.raises(ValueError, match=engine.NUM_THREADS_ENV):
            engine.default_num_threads()
    monkeypatch.delenv(engine.NUM_THREADS_ENV)
    scores, y, _ = _problem(4, 3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_threads"):
            _run(scores, y, num_threads=bad)
    with pytest.raises(ValueError, match="block_rows"):
        _run(scores, y, block_rows=0)


@pytest.mark.parametrize(
    "c,opts,explicit,threads",
    [
        (10, {}, None, 3),  # short rows: three threads' blocks of 12288+ rows fit the budget
        (10, {"weight": True, "ignore_index": 1, "label_smoothing": 0.1}, None, 1),
        (10, {}, 4, 4),  # asked for: four threads, shorter blocks, the same budget
        (10, {}, "env", 4),
        (1000, {}, None, 4),  # long rows: every thread, 2 MiB blocks
    ],
)
def test_threads_and_blocks_of_the_scratch_budget(monkeypatch, c, opts, explicit, threads):
    """Short rows run on fewer threads rather than in blocks too short to gain from them."""
    monkeypatch.delenv(engine.NUM_THREADS_ENV, raising=False)
    monkeypatch.setattr(engine, "default_num_threads", lambda: 4)
    if explicit == "env":
        monkeypatch.setenv(engine.NUM_THREADS_ENV, "4")
    seen = []
    monkeypatch.setattr(engine, "_run_tasks", lambda prob: seen.append(prob.plan[:2]))  # threads, block rows
    n = 262144 * 10 // c
    scores, y, kw = _problem(n, c, opts=opts)
    _run(scores, y, num_threads=explicit if isinstance(explicit, int) else None, **kw)
    [(used, block)] = seen
    assert used == threads
    if c > engine.SMALL_C:
        assert block == engine.BLOCK_BYTES // (c * 4)
    elif explicit is None:
        assert block >= engine.SHORT_ROWS_PER_THREAD
        assert -(-n // block) % used == 0  # as many blocks for every thread
    else:
        assert block < engine.SHORT_ROWS_PER_THREAD  # what the budget leaves four threads
    # the budget: row vectors of every thread's block within ~9% of the gradient
    assert used * block * engine.ROW_VECTOR_BYTES <= engine.SCRATCH_SHARE * scores.nbytes


@pytest.mark.parametrize("n,whole_chunks", [(262144, True), (180000, False)])
def test_short_row_blocks_of_whole_loss_chunks(monkeypatch, n, whole_chunks):
    """Two threads at C = 10: blocks of whole loss chunks when they hold four or more.

    Otherwise (a smaller batch, a smaller budget) blocks of equal rows; both
    an equal number for each thread, within the scratch budget.
    """
    monkeypatch.delenv(engine.NUM_THREADS_ENV, raising=False)
    monkeypatch.setattr(engine, "default_num_threads", lambda: 2)
    seen = []
    monkeypatch.setattr(engine, "_run_tasks", lambda prob: seen.append(prob.plan[:2]))  # threads, block rows
    scores, y, kw = _problem(n, 10)
    _run(scores, y, **kw)
    [(used, block)] = seen
    assert used == 2
    assert (block % engine.CHUNK_ROWS == 0) == whole_chunks
    if whole_chunks:
        assert block >= 4 * engine.CHUNK_ROWS
    else:
        assert -(-n // block) % used == 0  # as many blocks for each thread
    assert used * block * engine.ROW_VECTOR_BYTES <= engine.SCRATCH_SHARE * scores.nbytes


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    c=st.integers(1, 70),
    threads=st.integers(1, 3),
    block=st.integers(1, 45),
    opts=st.sampled_from(OPTIONS),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes(n, c, threads, block, opts, seed):
    opts = {k: v for k, v in opts.items() if not (k == "ignore_index" and v >= c)}
    scores, y, kw = _problem(n, c, opts=opts, seed=seed)
    loss, d = _run(scores, y, num_threads=threads, block_rows=block, **kw)
    ref_loss, ref_d = xs.softmax_loss(scores, y, engine="reference", **kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(d, ref_d, rtol=2e-5, atol=2e-6)
    one = _run(scores, y, num_threads=1, block_rows=n, **kw)
    _same_results((loss, d), one)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 30),
    c=st.integers(1, 60),
    offsets=st.lists(
        st.sampled_from([0.0, 15.0, -15.0, 17.0, -40.0, 90.0, -120.0, 1e4, -1e4]),
        min_size=1,
        max_size=30,
    ),
    masked=st.floats(0.0, 0.6),
    opts=st.sampled_from(OPTIONS),
    threads=st.integers(1, 3),
    block=st.integers(1, 31),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_adversarial_rows(n, c, offsets, masked, opts, threads, block, seed):
    """Rows shifted far up or down (computed unshifted or shifted) and −inf masks.

    Against the reference engine, and the same bits whatever the blocks.
    """
    opts = {k: v for k, v in opts.items() if not (k == "ignore_index" and v >= c)}
    scores, y, kw = _problem(n, c, opts=opts, seed=seed)
    scores += np.resize(np.asarray(offsets, np.float32), n)[:, None]
    rng = np.random.default_rng(seed)
    mask = rng.random(scores.shape) < masked
    mask[np.arange(n), y % c] = False  # targets stay finite: finite losses
    scores[mask] = -np.inf
    loss, d = _run(scores, y, num_threads=threads, block_rows=block, **kw)
    ref_loss, ref_d = xs.softmax_loss(scores, y, engine="reference", **kw)
    # Logits of 1e4 are spaced ~1e-3 apart in float32: so may the losses be.
    huge = np.abs(scores[~mask]).max() > 1e3
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=2e-3 if huge else 2e-6)
    np.testing.assert_allclose(d, ref_d, rtol=2e-5, atol=2e-6)
    one = _run(scores, y, num_threads=1, block_rows=n, **kw)
    _same_results((loss, d), one)


@pytest.mark.parametrize(
    "dtype,threads",
    [(np.float32, 1), (np.float32, 2), (np.float32, 4), (np.float16, 1), (np.float16, 2)],
)
@pytest.mark.parametrize(
    "n,c,opts",
    [
        (262144, 10, {}),
        (262144, 10, {"weight": True, "ignore_index": 3, "label_smoothing": 0.1}),
        (262144, 10, {"reduction": "none"}),
        (262144, 49, {"weight": True, "ignore_index": 3, "label_smoothing": 0.1}),
        (4096, 1000, {"label_smoothing": 0.1}),
        (64, 100_000, {}),
    ],
    ids=["C=10", "C=10-all-options", "C=10-none", "C=49-all-options", "C=1000", "C=100000"],
)
def test_peak_memory_near_the_gradient(n, c, opts, threads, dtype):
    """Peak extra memory (tracemalloc) at most 1.1x the gradient (besides the loss itself).

    A call after a first one: that first call imports modules lazily.
    float16 computes in a float32 block per thread, of one row at least:
    four threads forced onto these small float16 gradients (5-13 MB) would
    hold ~2 MB of such rows and fixed buffers whatever the budget, so float16
    is checked on one and two threads.
    """
    from xsoftmax._cli.timing import peak_bytes

    scores, y, kw = _problem(n, c, dtype, opts=opts, seed=23)
    _run(scores[:10], y[:10], num_threads=threads, **kw)
    peak = peak_bytes(lambda: _run(scores, y, num_threads=threads, **kw))
    loss_bytes = n * scores.itemsize if kw.get("reduction") == "none" else 0
    assert peak - loss_bytes <= 1.1 * scores.nbytes, (peak - loss_bytes) / scores.nbytes


def test_float16_store_is_numpy_rounding_bit_for_bit():
    """The float16 store (subnormal results computed with float32 arithmetic) equals ``astype``.

    Every 61st float32 bit pattern of 29 exponents around float16's
    subnormal range, both signs, plus random values of every size, ties and
    specials.
    (All 2^32 float32 values were checked once outside the suite.)
    """
    parts = []
    for e in list(range(95, 116)) + [0, 1, 126, 127, 141, 142, 143, 255]:
        bits = np.arange(0, 2**23, 61, dtype=np.uint32) | np.uint32(e << 23)
        parts += [bits, bits | np.uint32(0x80000000)]
    rng = np.random.default_rng(24)
    parts.append(rng.integers(0, 2**32, 2**20, dtype=np.uint64).astype(np.uint32))
    x = np.concatenate(parts).view(np.float32)
    ties = (np.arange(0, 1025, dtype=np.float32) + np.float32(0.5)) * np.float32(2.0**-24)
    x = np.concatenate([x, ties, -ties, np.float32([0.0, -0.0, 2.0**-14, 65504.0, 65520.0])])
    with np.errstate(all="ignore"):
        expected = x.astype(np.float16)
    out = np.empty_like(expected)
    with np.errstate(all="ignore"):  # as in the engine: 65520 and up overflow to inf
        store(x, out)
    same = out.view(np.uint16) == expected.view(np.uint16)
    assert np.all(same | (np.isnan(out) & np.isnan(expected)))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("opts", OPTIONS, ids=_ids)
@pytest.mark.parametrize("n,c", [(1, 1), (100, 3), (256, 10), (64, 300), (3000, 10)])
def test_small_call_path_gives_the_blocked_bits(n, c, opts, dtype):
    """Below SMALL_WORK a call runs on one thread in one block, with no planning:
    the same bits as the planned, threaded, blocked path (also with out=)."""
    scores, y, kw = _problem(n, c, dtype, opts=opts, seed=n + c)
    assert n * c <= engine.SMALL_WORK
    small_loss, small_d = _run(scores, y, **kw)
    loss, d = _run(scores, y, num_threads=3, block_rows=7, **kw)
    _same_bits(small_loss, loss)
    _same_bits(small_d, d)
    out = np.empty_like(scores)
    _same_bits(_run(scores, y, out=out, **kw)[1], d)
    in_place = scores.copy()
    _same_bits(_run(in_place, y, out=in_place, **kw)[1], d)


def test_small_call_of_no_rows():
    loss, d = _run(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), reduction="sum")
    assert d.shape == (0, 3) and float(loss) == 0.0
