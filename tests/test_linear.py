"""xs.linear_softmax_loss: values and gradients on every backend, chunking, memory, laziness, bad input."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import xsoftmax as xs
import xsoftmax._linear as linear_mod
from xsoftmax._backend import array_namespace, backend_name
from xsoftmax._linear import MIN_CHUNK_ROWS, default_chunk_rows

from _helpers import dtype_of, has_float16, is_backend, no_compute, on, ref_softmax_loss

N, D, C = 23, 4, 7
IGNORE = -100

OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore_index": IGNORE},
    "smooth": {"label_smoothing": 0.2},
    "all": {"weight": True, "ignore_index": IGNORE, "label_smoothing": 0.1},
}


def problem(seed=0, n=N, d=D, c=C, ignored=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((d, c))
    b = rng.standard_normal(c)
    y = rng.integers(0, c, n)
    y[rng.choice(n, size=min(ignored, n), replace=False)] = IGNORE
    weight = rng.random(c) + 0.1
    return x, w, b, y, weight


def oracle(x, w, b, y, *, reduction, weight=None, ignore_index=None, label_smoothing=0.0):
    """float64 NumPy: loop-based softmax_loss of x w + b, then the affine backward by hand."""
    s = x @ w + (0.0 if b is None else b)
    loss, g = ref_softmax_loss(
        s, y, reduction=reduction, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing
    )
    return loss, g @ w.T, x.T @ g, None if b is None else g.sum(axis=0)


def torch_reference(x, w, b, y, *, reduction, weight=None, ignore_index=None, label_smoothing=0.0):
    """Autograd of F.cross_entropy(F.linear(x, wᵀ, b)) in float64; gradients of Σ loss."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True)  # noqa: E731
    xt, wt, bt = t(x), t(w.T.copy()), None if b is None else t(b)
    kw = {"reduction": reduction, "label_smoothing": label_smoothing}
    if weight is not None:
        kw["weight"] = torch.tensor(weight)
    kw["ignore_index"] = IGNORE if ignore_index is None else ignore_index
    loss = F.cross_entropy(F.linear(xt, wt, bt), torch.tensor(y), **kw)
    loss.sum().backward()
    return (
        loss.detach().numpy(), xt.grad.numpy(), wt.grad.numpy().T, None if bt is None else bt.grad.numpy()
    )


def options(name, weight):
    kw = dict(OPTIONS[name])
    if kw.pop("weight", False):
        kw["weight"] = weight
    return kw


def labels_for(name, y):
    """Labels with ignored rows only where the option set has ignore_index."""
    return y if "ignore_index" in OPTIONS[name] else np.where(y == IGNORE, 1, y)


def to_backend(xp, *arrays, row_chunks=10):
    out = [None if a is None else on(xp, a) for a in arrays]
    if is_backend(xp, "dask"):  # several row blocks, so the tree sums have something to add
        out = [None if a is None else a.rechunk((row_chunks,) + (-1,) * (a.ndim - 1)) for a in out]
    return out


def check(got, expected, *, rtol=1e-10, atol=1e-12):
    for name, g, e in zip(("loss", "dx", "dw", "db"), got, expected, strict=True):
        if e is None:
            assert g is None, name
            continue
        np.testing.assert_allclose(xs.to_numpy(g), e, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("chunk_rows", [1, 7, None])
@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_float64_oracle_and_torch_on_every_backend(xp, reduction, opt, chunk_rows):
    x, w, b, y, weight = problem()
    y = labels_for(opt, y)
    kw = options(opt, weight)
    expected = oracle(x, w, b, y, reduction=reduction, **kw)
    bx, bw, bb, by, bweight = to_backend(xp, x, w, b, y, kw.get("weight"))
    if "weight" in kw:
        kw_b = {**kw, "weight": bweight}
    else:
        kw_b = kw
    got = xs.linear_softmax_loss(bx, bw, bb, by, reduction=reduction, chunk_rows=chunk_rows, **kw_b)
    assert all(backend_name(array_namespace(g)) == backend_name(xp) for g in got)
    check(got, expected)
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    check(got, torch_reference(x, w, b, y, reduction=reduction, **kw))


def test_without_bias_db_is_none(xp):
    x, w, _, y, _ = problem(seed=1, ignored=0)
    bx, bw, by = to_backend(xp, x, w, y)
    got = xs.linear_softmax_loss(bx, bw, None, by, chunk_rows=5)
    assert got[3] is None
    check(got, oracle(x, w, None, y, reduction="mean"))


@pytest.mark.parametrize("n", [1, 256, 257, 1000])
def test_default_chunk_rows_budget(n):
    rows = default_chunk_rows(n)
    assert 1 <= rows <= n
    assert rows == min(n, max(MIN_CHUNK_ROWS, -(-n // 16)))


def test_n_not_a_multiple_of_the_default_chunk():
    x, w, b, y, weight = problem(seed=2, n=1000, d=3, c=5, ignored=50)
    kw = {"weight": weight, "ignore_index": IGNORE, "label_smoothing": 0.05}
    assert 1000 % default_chunk_rows(1000) != 0
    check(xs.linear_softmax_loss(x, w, b, y, **kw), oracle(x, w, b, y, reduction="mean", **kw))


def test_inputs_are_not_mutated(xp):
    x, w, b, y, weight = problem(seed=3)
    arrays = to_backend(xp, x, w, b, y, weight)
    before = [xs.to_numpy(a).copy() for a in arrays]
    bx, bw, bb, by, bweight = arrays
    for reduction in ("mean", "none"):
        xs.linear_softmax_loss(bx, bw, bb, by, reduction=reduction, weight=bweight, ignore_index=IGNORE,
                               label_smoothing=0.1, chunk_rows=4)  # fmt: skip
    for a, old in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(xs.to_numpy(a), old)


def test_half_precision_is_computed_in_float32(xp):
    if not has_float16(xp):
        pytest.skip("no float16 on this backend")
    f16 = dtype_of(xp, "float16")
    x, w, b, y, _ = problem(seed=4, ignored=0)
    bx, bw, bb = (on(xp, a, dtype=f16) for a in (x, w, b))
    by = on(xp, y)
    got = xs.linear_softmax_loss(bx, bw, bb, by, chunk_rows=6)
    assert all(g.dtype == f16 for g in got)
    x16, w16, b16 = (np.asarray(a, dtype=np.float16).astype(np.float64) for a in (x, w, b))
    check(got, oracle(x16, w16, b16, y, reduction="mean"), rtol=1e-2, atol=2e-3)


def test_all_rows_ignored_gives_nan_mean_like_torch():
    x, w, b, y, _ = problem(seed=5)
    y[:] = IGNORE
    loss, dx, dw, db = xs.linear_softmax_loss(x, w, b, y, ignore_index=IGNORE, chunk_rows=4)
    assert np.isnan(loss)
    assert not np.any(dx) and not np.any(dw) and not np.any(db)


def test_numpy_runs_the_fused_engine_in_place_on_one_buffer(monkeypatch):
    """Every chunk goes to the namespace's fused engine with out= the chunk's logits buffer."""
    from xsoftmax._engines import numpy as numpy_engine

    calls = []
    real = linear_mod.select_engine

    def recording(xp, engine):
        fn = real(xp, engine)

        def wrapped(inp, *, out=None):
            calls.append((fn, out is inp.scores, out.base if out.base is not None else out, inp.denom))
            return fn(inp, out=out)

        return wrapped

    monkeypatch.setattr(linear_mod, "select_engine", recording)
    x, w, b, y, weight = problem(seed=6)
    xs.linear_softmax_loss(x, w, b, y, weight=weight, ignore_index=IGNORE, chunk_rows=5)
    assert len(calls) == 5  # ⌈23 / 5⌉
    assert all(fn is numpy_engine.softmax_loss and in_place for fn, in_place, _, _ in calls)
    assert len({id(buf) for _, _, buf, _ in calls}) == 1  # one reused buffer
    # The whole batch's "mean" denominator, the same for every chunk.
    expected_d = sum(weight[v] for v in y if v != IGNORE)
    assert all(float(d) == pytest.approx(expected_d) for *_, d in calls)


def test_peak_memory_is_under_an_eighth_of_the_logits():
    n, d, c = 4096, 32, 2048  # N ≥ 16 · MIN_CHUNK_ROWS: the default chunk is 1/16 of the rows
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((d, c), dtype=np.float32)
    b = rng.standard_normal(c, dtype=np.float32)
    y = rng.integers(0, c, n)
    y[::10] = IGNORE
    weight = rng.random(c, dtype=np.float32)
    logits = n * c * 4
    xs.linear_softmax_loss(x[:2], w, b, y[:2] % c)  # imports on first use are not the call's memory
    for kw in ({}, {"weight": weight, "ignore_index": IGNORE, "label_smoothing": 0.1}):
        tracemalloc.start()
        try:
            got = xs.linear_softmax_loss(x, w, b, y if kw else np.abs(y), **kw)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        returned = sum(a.nbytes for a in got)
        assert peak - returned <= logits / 8, (peak - returned) / logits


def test_dask_is_lazy_and_computes_once_with_tree_sums():
    da = pytest.importorskip("dask.array")
    import dask

    x, w, b, y, weight = problem(seed=8, n=50)
    kw = {"ignore_index": IGNORE, "label_smoothing": 0.1}
    bx = da.from_array(x, chunks=(9, -1))
    by = da.from_array(y, chunks=(9,))
    bw, bb, bweight = da.from_array(w), da.from_array(b), da.from_array(weight)
    with no_compute():
        got = xs.linear_softmax_loss(bx, bw, bb, by, weight=bweight, chunk_rows=4, **kw)
    assert got[1].chunks[0] == bx.chunks[0]
    computes = []

    def counting(dsk, keys, **k):
        computes.append(1)
        return dask.get(dsk, keys, **k)

    with dask.config.set(scheduler=counting):
        values = dask.compute(*got)
    assert len(computes) == 1
    check(values, oracle(x, w, b, y, reduction="mean", weight=weight, **kw))
    with dask.config.set(scheduler="sync"):
        by_bad = da.from_array(np.where(np.arange(50) == 31, C, y), chunks=(9,))
        lazy = xs.linear_softmax_loss(bx, bw, bb, by_bad, **kw)
        with pytest.raises(ValueError, match=r"y\[31\]"):
            dask.compute(*lazy)


# ---- bad input ----------------------------------------------------------------------------


def test_shapes_that_do_not_chain_name_both_shapes():
    x, w, b, y, _ = problem(ignored=0)
    with pytest.raises(ValueError, match=r"x \(N, D\) and w \(D, C\).*\(23, 4\).*\(5, 7\)"):
        xs.linear_softmax_loss(x, np.zeros((5, C)), b, y)
    with pytest.raises(ValueError, match=r"b must have shape \(C,\) = \(7,\).*\(4, 7\).*\(6,\)"):
        xs.linear_softmax_loss(x, w, np.zeros(6), y)
    with pytest.raises(ValueError, match=r"y must have shape \(N,\).*\(23, 4\).*\(22,\)"):
        xs.linear_softmax_loss(x, w, b, y[:22])
    with pytest.raises(ValueError, match=r"x must be 2-D"):
        xs.linear_softmax_loss(x[0], w, b, y)


def test_mixed_namespaces_and_non_float_w_are_type_errors():
    torch = pytest.importorskip("torch")
    x, w, b, y, _ = problem(ignored=0)
    with pytest.raises(TypeError, match="two array namespaces"):
        xs.linear_softmax_loss(x, torch.tensor(w), b, y)
    with pytest.raises(TypeError, match="w must have a real floating dtype"):
        xs.linear_softmax_loss(x, w.astype(np.int64), b, y)
    with pytest.raises(TypeError, match=r"y must have an integer dtype \(class labels\), got float64"):
        xs.linear_softmax_loss(x, w, b, y.astype(np.float64))


def test_labels_and_options_checked_as_in_softmax_loss():
    x, w, b, y, _ = problem(ignored=0)
    y = y.copy()
    y[5] = C
    with pytest.raises(ValueError, match=r"y\[5\] = 7 is out of range"):
        xs.linear_softmax_loss(x, w, b, y)
    y[5] = 0
    with pytest.raises(ValueError, match="reduction must be one of"):
        xs.linear_softmax_loss(x, w, b, y, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        xs.linear_softmax_loss(x, w, b, y, label_smoothing=2.0)
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\)"):
        xs.linear_softmax_loss(x, w, b, y, weight=np.ones(C + 1))
    with pytest.raises(ValueError, match="chunk_rows must be a positive integer"):
        xs.linear_softmax_loss(x, w, b, y, chunk_rows=0)


# ---- the CuPy path without a GPU ----------------------------------------------------------


def test_cupy_arrays_select_cupy_and_its_fused_engine():
    pytest.importorskip("cupy")
    import array_api_compat.cupy as cxp

    from xsoftmax._engines import cupy as cupy_engine

    mod, engine = linear_mod.native(cxp)
    assert mod.__name__ == "cupy" and engine is cupy_engine.softmax_loss


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_chunk_loop_with_the_cupy_kernels_on_a_cpu_twin(tmp_path, reduction):
    """The CuPy path's chunk loop, with the CuPy engine's driver and its kernel text built for the CPU."""
    from xsoftmax._engines.cupy import fused_softmax_loss

    from _cpu_twin import TwinLauncher, TwinUnavailable, compiler

    try:
        compiler()
    except TwinUnavailable as exc:
        pytest.skip(str(exc))
    launcher = TwinLauncher(str(tmp_path))
    calls = []

    def engine(inp, *, out=None):
        calls.append(out is inp.scores)
        return fused_softmax_loss(inp, launcher, out=out)

    x, w, b, y, weight = problem(seed=9)
    kw = {"weight": weight, "ignore_index": IGNORE, "label_smoothing": 0.1}
    p = linear_mod.check_linear_inputs(x, w, b, y, reduction=reduction, chunk_rows=6, **kw)
    denom = linear_mod.mean_denominator(p) if reduction == "mean" else None
    got = linear_mod._mutable(p, denom, mod=np, engine=engine)
    assert calls == [True] * 4  # ⌈23 / 6⌉ chunks, each in place
    check(got, oracle(x, w, b, y, reduction=reduction, **kw), rtol=1e-9, atol=1e-11)
