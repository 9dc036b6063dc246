"""The Dask engine on the local threaded scheduler: values, laziness, graph size.

The same engine on a real multi-process ``dask.distributed`` cluster is
tested in ``test_distributed.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import xsoftmax as xs  # noqa: E402

from _helpers import TOLERANCES, graph_size, no_compute  # noqa: E402

C = 11
ROWS = 40  # rows per chunk


def _data(nblocks, *, c=C, rows=ROWS, seed=0, ignore=None, scale=3.0):
    rng = np.random.default_rng(seed)
    n = nblocks * rows
    s = rng.standard_normal((n, c)) * scale
    y = rng.integers(0, c, n)
    if ignore is not None:
        y[rng.random(n) < 0.3] = ignore
    return s, y


def _to_dask(s, y, *, rows=ROWS, cols=-1, label_rows=None):
    return (
        da.from_array(s, chunks=(rows, cols)),
        da.from_array(y, chunks=label_rows or rows),
    )


OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore_index": 3},
    "ignore_neg": {"ignore_index": -100},
    "smooth": {"label_smoothing": 0.2},
    "all": {"weight": True, "ignore_index": 2, "label_smoothing": 0.1},
}


def _kwargs(opts, c, *, dask_weight):
    kw = {k: v for k, v in opts.items() if k != "weight"}
    if opts.get("weight"):
        w = np.linspace(0.2, 2.0, c)
        kw["weight"] = da.from_array(w, chunks=4) if dask_weight else w
    return kw


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", list(OPTIONS), ids=list(OPTIONS))
def test_matches_numpy_float64(reduction, opts):
    opts = OPTIONS[opts]
    s, y = _data(5, ignore=opts.get("ignore_index"))
    ds, dy = _to_dask(s, y)
    loss, d = xs.softmax_loss(ds, dy, reduction=reduction, **_kwargs(opts, C, dask_weight=True))
    ref_loss, ref_d = xs.softmax_loss(
        s, y, reduction=reduction, engine="reference", **_kwargs(opts, C, dask_weight=False)
    )
    assert isinstance(loss, da.Array) and isinstance(d, da.Array)
    assert d.shape == s.shape and d.dtype == s.dtype and loss.dtype == s.dtype
    assert loss.shape == (() if reduction != "none" else (s.shape[0],))
    got_loss, got_d = dask.compute(loss, d, scheduler="threads")
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("opts", ["plain", "all"])
def test_low_precision_matches_float64_reference(dtype, opts):
    opts = OPTIONS[opts]
    s, y = _data(4, ignore=opts.get("ignore_index"))
    s = s.astype(dtype)
    ds, dy = _to_dask(s, y)
    kw = _kwargs(opts, C, dask_weight=True)
    if "weight" in kw:
        kw["weight"] = kw["weight"].astype(dtype)
    loss, d = xs.softmax_loss(ds, dy, **kw)
    assert loss.dtype == np.dtype(dtype) and d.dtype == np.dtype(dtype)
    ref_loss, ref_d = xs.softmax_loss(
        s.astype(np.float64), y, engine="reference", **_kwargs(opts, C, dask_weight=False)
    )
    rtol, atol = TOLERANCES[dtype]
    got_loss, got_d = dask.compute(loss, d)
    assert got_loss.dtype == np.dtype(dtype) and got_d.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got_loss.astype(np.float64), ref_loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(got_d.astype(np.float64), ref_d, rtol=rtol, atol=atol)


def test_float16_mean_over_many_rows_keeps_the_loss():
    # Each row's share of the mean, ~0.0067 / 1e5, is a float16 subnormal:
    # the blocks must add their rows in float32 before anything is rounded.
    n = 100_000
    s = np.tile(np.array([[5.0, 0.0]], dtype=np.float16), (n, 1))
    y = np.zeros(n, dtype=np.int64)
    loss, _ = xs.softmax_loss(da.from_array(s, chunks=(n // 4, -1)), da.from_array(y, chunks=n // 4))
    exact = np.log1p(np.exp(-5.0))
    np.testing.assert_allclose(float(loss.compute()), exact, rtol=1e-3)


def test_extreme_logits_and_masked_classes():
    s, y = _data(3, scale=1.0)
    s[:, 0] = 1e4
    s[::2, 1] = -1e4
    s[1::2, 5] = -np.inf
    y[1::2] = np.where(y[1::2] == 5, 4, y[1::2])  # a -inf target would be an inf loss
    ds, dy = _to_dask(s, y)
    loss, d = xs.softmax_loss(ds, dy)
    ref_loss, ref_d = xs.softmax_loss(s, y, engine="reference")
    got_loss, got_d = dask.compute(loss, d)
    assert np.isfinite(got_loss) and np.all(np.isfinite(got_d))
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


def test_uneven_chunks_and_misaligned_labels():
    s, y = _data(1, rows=137)
    ds = da.from_array(s, chunks=((50, 50, 37), (C,)))
    dy = da.from_array(y, chunks=((20, 100, 17),))
    loss, d = xs.softmax_loss(ds, dy, reduction="none")
    assert d.chunks == ds.chunks and loss.chunks == (ds.chunks[0],)
    ref_loss, ref_d = xs.softmax_loss(s, y, reduction="none", engine="reference")
    got_loss, got_d = dask.compute(loss, d)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


def test_class_axis_chunks_are_kept_without_a_warning():
    # Class-chunked scores merge row states across the class chunks
    # (_dask_classes): no rechunk, the gradient keeps the scores' chunks.
    s, y = _data(4)
    ds, dy = _to_dask(s, y, cols=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, d = xs.softmax_loss(ds, dy)
    assert d.chunks == ds.chunks
    ref_loss, ref_d = xs.softmax_loss(s, y, engine="reference")
    got_loss, got_d = dask.compute(loss, d)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


def test_row_chunked_scores_do_not_warn():
    s, y = _data(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xs.softmax_loss(*_to_dask(s, y))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nothing_is_computed_before_compute(reduction):
    s, y = _data(4, ignore=-1)
    ds, dy = _to_dask(s, y)
    w = da.from_array(np.linspace(0.5, 1.5, C), chunks=C)
    with no_compute():
        loss, d = xs.softmax_loss(
            ds, dy, reduction=reduction, weight=w, ignore_index=-1, label_smoothing=0.1
        )
        with pytest.raises(AssertionError, match="computed before"):
            loss.compute()  # proves the guard is live
    ref_loss, _ = xs.softmax_loss(
        s, y, reduction=reduction, weight=np.linspace(0.5, 1.5, C), ignore_index=-1,
        label_smoothing=0.1, engine="reference",
    )
    np.testing.assert_allclose(loss.compute(), ref_loss, rtol=1e-12)


def test_bad_label_raises_at_compute_with_global_row():
    s, y = _data(4)
    y[97] = C + 4  # block 2 (rows 80..119), local row 17
    ds, dy = _to_dask(s, y, label_rows=(30, 30, 37, 63))
    loss, d = xs.softmax_loss(ds, dy)  # builds without looking at the labels
    with pytest.raises(ValueError, match=rf"y\[97\] = {C + 4} is out of range"):
        dask.compute(loss, d)
    with pytest.raises(ValueError, match=r"y\[97\]"):
        d.compute()  # the gradient alone is guarded too


def test_ignore_index_outside_class_range_is_not_a_bad_label():
    s, y = _data(3)
    y[::7] = -100
    loss, _ = xs.softmax_loss(*_to_dask(s, y), ignore_index=-100)
    ref, _ = xs.softmax_loss(s, y, ignore_index=-100, engine="reference")
    np.testing.assert_allclose(loss.compute(), ref, rtol=1e-12)


def test_every_row_ignored_gives_nan_mean_and_zero_gradient():
    s, y = _data(3)
    y[:] = 4
    loss, d = xs.softmax_loss(*_to_dask(s, y), ignore_index=4)
    with np.errstate(divide="ignore", invalid="ignore"):
        got_loss, got_d = dask.compute(loss, d)
        ref_loss, ref_d = xs.softmax_loss(s, y, ignore_index=4, engine="reference")
    assert np.isnan(got_loss) and np.isnan(ref_loss)
    assert np.array_equal(got_d, np.zeros_like(s)) and np.array_equal(ref_d, got_d)


def test_zero_weight_denominator_matches_reference():
    # Σ v_i w_{y_i} = 0 with rows that are not ignored (their classes weigh
    # 0): the reference's 1/D scale makes those rows NaN (as in PyTorch) and
    # leaves the ignored rows at exactly 0.
    s, y = _data(3)
    y = y % 3
    y[::5] = -1
    w = np.where(np.arange(C) < 3, 0.0, 1.0)
    loss, d = xs.softmax_loss(*_to_dask(s, y), weight=da.from_array(w), ignore_index=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        got_loss, got_d = dask.compute(loss, d)
        ref_loss, ref_d = xs.softmax_loss(s, y, weight=w, ignore_index=-1, engine="reference")
    assert np.isnan(got_loss) and np.isnan(ref_loss)
    assert np.isnan(ref_d[1]).all() and (ref_d[0] == 0).all()
    np.testing.assert_array_equal(got_d, ref_d)


def test_mean_denominator_spans_all_blocks():
    # One block holds every non-ignored row: a per-block "mean" would give
    # the other blocks a 0/0 and this one the wrong scale.
    s, y = _data(4)
    y[ROWS:] = -1
    loss, d = xs.softmax_loss(*_to_dask(s, y), ignore_index=-1, weight=da.ones(C, chunks=C) * 2)
    ref_loss, ref_d = xs.softmax_loss(s, y, ignore_index=-1, weight=np.full(C, 2.0), engine="reference")
    got_loss, got_d = dask.compute(loss, d)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


def _scores_readers(d, loss, scores) -> dict:
    """For each scores block, the tasks of ``(loss, d)``'s graph that read it."""
    from dask.highlevelgraph import HighLevelGraph

    graph = HighLevelGraph.merge(d.__dask_graph__(), loss.__dask_graph__())
    deps = graph.get_all_dependencies()
    blocks = set(dict(scores.__dask_graph__()))
    return {b: [k for k, v in deps.items() if b in v] for b in blocks}


@pytest.mark.parametrize("nblocks", [4, 16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_graph_is_linear_in_chunks_and_reads_scores_once(nblocks, reduction):
    s, y = _data(nblocks, ignore=-1, rows=8)
    ds, dy = _to_dask(s, y, rows=8)
    w = da.from_array(np.linspace(0.5, 1.5, C), chunks=C)
    inputs = graph_size(ds, dy, w)
    loss, d = xs.softmax_loss(
        ds, dy, reduction=reduction, weight=w, ignore_index=-1, label_smoothing=0.1
    )
    added = graph_size(loss, d) - inputs
    assert added <= 8 * nblocks + 16, f"{added} tasks for {nblocks} blocks"
    readers = _scores_readers(d, loss, ds)
    assert all(len(r) == 1 for r in readers.values()), readers
    # The generic code on the same arrays: dozens of small tasks per block.
    ref_loss, ref_d = xs.softmax_loss(
        ds, dy, reduction=reduction, weight=w, ignore_index=-1, label_smoothing=0.1,
        engine="reference",
    )
    assert graph_size(ref_loss, ref_d) - inputs > 2 * added


def test_fused_engine_option_selects_the_dask_engine():
    s, y = _data(4)
    ds, dy = _to_dask(s, y)
    auto = graph_size(*xs.softmax_loss(ds, dy))
    fused = graph_size(*xs.softmax_loss(ds, dy, engine="fused"))
    reference = graph_size(*xs.softmax_loss(ds, dy, engine="reference"))
    assert auto == fused < reference


def test_inputs_are_not_modified():
    s, y = _data(2)
    s_copy = s.copy()
    ds, dy = _to_dask(s, y)
    dask.compute(*xs.softmax_loss(ds, dy))
    assert np.array_equal(s, s_copy)


@pytest.mark.parametrize("env_threads", [None, "3"])
def test_each_block_runs_the_numpy_engine_once(monkeypatch, env_threads):
    # NumPy-backed chunks go to the fused NumPy engine (not the generic code),
    # one call per row block, with the user's reduction ("mean", given the
    # whole batch's D) so the block's rows are added in the compute dtype,
    # on one thread unless XSOFTMAX_NUM_THREADS says otherwise.
    import xsoftmax._engines.numpy as numpy_engine

    calls = []
    original = numpy_engine.softmax_loss

    def recording(inp, *, out=None, num_threads=None):
        # The engine reads the scores block itself, not a copy of it.
        assert any(np.shares_memory(inp.scores, b) for b in blocks)
        calls.append((type(inp.scores), inp.scores.shape, inp.reduction, num_threads))
        return original(inp, out=out, num_threads=num_threads)

    monkeypatch.setattr(numpy_engine, "softmax_loss", recording)
    if env_threads is None:
        monkeypatch.delenv(numpy_engine.NUM_THREADS_ENV, raising=False)
    else:
        monkeypatch.setenv(numpy_engine.NUM_THREADS_ENV, env_threads)
    s, y = _data(4)
    ds, dy = _to_dask(s, y)
    blocks = list(dict(ds.__dask_graph__()).values())  # from_array keeps its blocks in the graph
    w = da.from_array(np.linspace(0.5, 1.5, C), chunks=C)
    loss, d = xs.softmax_loss(ds, dy, weight=w, label_smoothing=0.1)
    assert not calls  # lazy
    dask.compute(loss, d, scheduler="threads")
    threads = 1 if env_threads is None else None  # None: the engine reads the variable
    assert sorted(calls, key=str) == [(np.ndarray, (ROWS, C), "mean", threads)] * 4


@pytest.mark.gpu
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cupy_backed_chunks_run_the_cupy_engine(monkeypatch, reduction):
    status = xs.available_backends()["cupy"]
    if status != "ok":
        pytest.skip(f"cupy: {status}")
    import cupy

    import xsoftmax._engines.cupy as cupy_engine

    calls = []
    original = cupy_engine.softmax_loss

    def recording(inp, *, out=None):
        calls.append(type(inp.scores))
        return original(inp, out=out)

    monkeypatch.setattr(cupy_engine, "softmax_loss", recording)
    s, y = _data(4, ignore=-1)
    w = np.linspace(0.5, 1.5, C)
    ds = da.from_array(cupy.asarray(s), chunks=(ROWS, -1), asarray=False)
    dy = da.from_array(cupy.asarray(y), chunks=ROWS, asarray=False)
    dw = da.from_array(cupy.asarray(w), chunks=-1, asarray=False)
    loss, d = xs.softmax_loss(ds, dy, weight=dw, ignore_index=-1, label_smoothing=0.1, reduction=reduction)
    got_loss, got_d = dask.compute(loss, d, scheduler="threads")
    assert isinstance(got_d, cupy.ndarray) and isinstance(got_loss, cupy.ndarray)
    assert calls == [cupy.ndarray] * 4
    ref_loss, ref_d = xs.softmax_loss(
        s, y, weight=w, ignore_index=-1, label_smoothing=0.1, reduction=reduction, engine="reference"
    )
    np.testing.assert_allclose(cupy.asnumpy(got_loss), ref_loss, rtol=1e-10)
    np.testing.assert_allclose(cupy.asnumpy(got_d), ref_d, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("cols", [-1, 4])
def test_unknown_row_chunk_sizes_after_masking(cols):
    # Boolean masking leaves NaN row chunk sizes: N is unknown, so the "mean"
    # denominator must come from counting the labels, also with class chunks.
    s, y = _data(4)
    keep = s[:, 0] > 0
    ds, dy = _to_dask(s, y, cols=cols)
    mask = ds[:, 0] > 0
    with no_compute():
        loss, d = xs.softmax_loss(ds[mask], dy[mask])
    ref_loss, ref_d = xs.softmax_loss(s[keep], y[keep], engine="reference")
    got_loss, got_d = dask.compute(loss, d)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)
