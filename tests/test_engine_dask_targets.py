"""The Dask engine with issue 15's options, on row chunks and on class chunks, against the oracle.

Class chunks: each block's partial row state merges across the class chunks
(``xsoftmax/_engines/_dask_classes.py``); every combination of targets
(labels / probabilities), weight, ignore_index, smoothing, z-loss, softcap
and reduction is compared with ``tests/_oracle.py``. Row chunks run each
block's own engine with the whole batch's ``D`` and ``V``.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

from _oracle import oracle_softmax_loss  # noqa: E402

import xsoftmax as xs  # noqa: E402
from xsoftmax._engines._dask_classes import _Layout, _merge  # noqa: E402

from _helpers import TOLERANCES, graph_size, no_compute  # noqa: E402

C = 12
N = 37
IGNORE = -1

#: Scores chunkings (rows, classes): the plain row layout, C/4 class chunks,
#: uneven chunks on both axes, and one class per chunk.
LAYOUTS = {
    "rows": (10, -1),
    "c4": (10, C // 4),
    "uneven": ((10, 17, 10), (5, 2, 4, 1)),
    "c1": (13, 1),
}
CLASS_LAYOUTS = ["c4", "uneven", "c1"]


def _problem(seed=0, *, n=N, c=C, scale=3.0):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, c)) * scale
    y = rng.integers(0, c, n)
    y[rng.random(n) < 0.25] = IGNORE
    q = rng.random((n, c))  # need not sum to 1 (torch does not check)
    w = np.linspace(0.2, 2.0, c)
    return s, y, q, w


def softmax_loss(ds, dy, **kw):
    """The public entry point on Dask arrays with the fused (Dask) engine."""
    return xs.softmax_loss(ds, dy, engine="fused", **kw)


def _options(probabilities):
    """Every combination of the options (ignore_index only with labels)."""
    ignores = [None] if probabilities else [None, IGNORE]
    for weighted, ii, eps, zl, cap in itertools.product([False, True], ignores, [0.0, 0.1], [0.0, 1e-2],
                                                        [None, 2.0]):  # fmt: skip
        yield dict(weighted=weighted, ignore_index=ii, label_smoothing=eps, z_loss=zl, softcap=cap)


def _id(o):
    return "-".join(
        [("w" if o["weighted"] else "nw"), f"ii{o['ignore_index']}", f"eps{o['label_smoothing']}",
         f"z{o['z_loss']}", f"cap{o['softcap']}"]
    )  # fmt: skip


LABEL_OPTIONS = list(_options(False))
PROB_OPTIONS = list(_options(True))


def _run(layout, probabilities, reduction, opts, *, dtype="float64", seed=0):
    s, y, q, w = _problem(seed)
    s = s.astype(dtype)
    if opts["ignore_index"] is None:
        y = np.where(y == IGNORE, 0, y)
    target = q if probabilities else y
    chunks = LAYOUTS[layout]
    ds = da.from_array(s, chunks=chunks)
    dy = da.from_array(target, chunks=chunks if probabilities else chunks[0])
    kw = {k: v for k, v in opts.items() if k != "weighted"}
    weight = w if opts["weighted"] else None
    with no_compute():
        dw = None if weight is None else da.from_array(weight, chunks=5)
        loss, d = softmax_loss(ds, dy, reduction=reduction, weight=dw, **kw)
    assert d.chunks == ds.chunks and d.dtype == s.dtype and loss.dtype == s.dtype
    assert loss.shape == ((N,) if reduction == "none" else ())
    if layout != "rows":  # this engine's class-chunked graph, not a fallback to the generic code
        assert any(name.startswith("xsoftmax-row-state") for name in d.__dask_graph__().layers)
    with np.errstate(all="ignore"):
        got_loss, got_d = dask.compute(loss, d)
    ref_loss, ref_d = oracle_softmax_loss(
        s.astype(np.float64), target, reduction=reduction, weight=weight, **kw
    )
    return got_loss, got_d, ref_loss, ref_d


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", LABEL_OPTIONS, ids=_id)
@pytest.mark.parametrize("layout", CLASS_LAYOUTS)
def test_class_chunks_labels_match_oracle(layout, opts, reduction):
    got_loss, got_d, ref_loss, ref_d = _run(layout, False, reduction, opts)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", PROB_OPTIONS, ids=_id)
@pytest.mark.parametrize("layout", CLASS_LAYOUTS)
def test_class_chunks_probabilities_match_oracle(layout, opts, reduction):
    got_loss, got_d, ref_loss, ref_d = _run(layout, True, reduction, opts)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", LABEL_OPTIONS, ids=_id)
def test_row_chunks_labels_match_oracle(opts, reduction):
    """Row chunks: each block's own engine with the whole batch's D and V."""
    got_loss, got_d, ref_loss, ref_d = _run("rows", False, reduction, opts)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", PROB_OPTIONS, ids=_id)
def test_row_chunks_probabilities_match_oracle(opts, reduction):
    got_loss, got_d, ref_loss, ref_d = _run("rows", True, reduction, opts)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("probabilities", [False, True], ids=["labels", "probabilities"])
@pytest.mark.parametrize("layout", ["c4", "uneven"])
def test_class_chunks_low_precision(layout, probabilities, dtype):
    opts = dict(weighted=True, ignore_index=None if probabilities else IGNORE, label_smoothing=0.1,
                z_loss=1e-2, softcap=2.0)  # fmt: skip
    rtol, atol = TOLERANCES[dtype]
    for reduction in ("mean", "none"):
        got_loss, got_d, ref_loss, ref_d = _run(layout, probabilities, reduction, opts, dtype=dtype)
        assert got_d.dtype == np.dtype(dtype) and got_loss.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got_loss.astype(np.float64), ref_loss, rtol=rtol, atol=atol)
        np.testing.assert_allclose(got_d.astype(np.float64), ref_d, rtol=rtol, atol=atol)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "opts", [dict(), dict(weight=True), dict(ignore_index=3), dict(label_smoothing=0.2),
             dict(weight=True, ignore_index=IGNORE, label_smoothing=0.1)],
    ids=["plain", "weight", "ignore", "smooth", "all"],
)  # fmt: skip
@pytest.mark.parametrize("layout", CLASS_LAYOUTS)
def test_class_chunks_equal_the_numpy_engine(layout, opts, reduction):
    """Through ``xs.softmax_loss``: class-chunked Dask against the fused NumPy engine (today's options)."""
    s, y, _, w = _problem(3)
    kw = dict(opts, reduction=reduction)
    if kw.pop("weight", False):
        kw["weight"] = w
    y = np.where(y == IGNORE, kw.get("ignore_index", 0), y)  # ignored rows only with ignore_index
    ds = da.from_array(s, chunks=LAYOUTS[layout])
    dkw = kw | ({"weight": da.from_array(w, chunks=5)} if "weight" in kw else {})
    with no_compute():
        loss, d = xs.softmax_loss(ds, da.from_array(y, chunks=LAYOUTS[layout][0]), engine="fused", **dkw)
    ref_loss, ref_d = xs.softmax_loss(s, y, engine="fused", **kw)
    got_loss, got_d = dask.compute(loss, d)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


def test_extreme_logits_and_masks_across_class_chunks():
    # Row 0: one class chunk all −inf, the other's maximum −1e4 (a shift reset
    # to 0 in the masked chunk would underflow the other's Σ e^{z−m} to 0);
    # row 1: ±1e4; row 2: a −inf in a chunk with finite logits.
    s = np.zeros((3, 6))
    s[0, :3] = -np.inf
    s[0, 3:] = [-1e4, -1e4 + 1, -1e4 + 2]
    s[1] = [1e4, -1e4, 0.0, 1e4 - 3, 5.0, -1e4]
    s[2] = [0.5, -np.inf, 1.0, 2.0, 0.0, -1.0]
    y = np.array([4, 0, 2])
    for cap, eps in [(None, 0.0), (30.0, 0.0), (30.0, 0.1)]:
        for cols in (3, 1, 2):
            kw = dict(reduction="none", softcap=cap, label_smoothing=eps, z_loss=1e-3)
            loss, d = softmax_loss(da.from_array(s, chunks=(2, cols)), da.from_array(y, chunks=2), **kw)
            with np.errstate(all="ignore"):
                got_loss, got_d = dask.compute(loss, d)
                ref_loss, ref_d = oracle_softmax_loss(s, y, **kw)
            # +inf loss where ε > 0 meets a −inf logit without softcap (torch); finite otherwise.
            np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12)
            np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)
            if cap is not None:
                assert np.all(np.isfinite(got_d)) and np.all(np.isfinite(got_loss))


@pytest.mark.parametrize("probabilities", [False, True], ids=["labels", "probabilities"])
def test_k_dimensional_class_chunks(probabilities):
    """(N, C, d) scores chunked along the class axis: the public layer's rows keep the class chunks."""
    rng = np.random.default_rng(8)
    s = rng.standard_normal((6, 8, 5)) * 2
    target = rng.random((6, 8, 5)) if probabilities else rng.integers(0, 8, (6, 5))
    ds = da.from_array(s, chunks=(2, 2, 5))
    dt = da.from_array(target, chunks=(2, 2, 5) if probabilities else (2, 5))
    kw = dict(z_loss=1e-2, softcap=3.0, label_smoothing=0.1, weight=np.linspace(0.5, 1.5, 8))
    for reduction in ("mean", "none"):
        with no_compute():
            dkw = kw | {"weight": da.from_array(kw["weight"])}
            loss, d = softmax_loss(ds, dt, reduction=reduction, **dkw)
        assert d.shape == s.shape and loss.shape == ((6, 5) if reduction == "none" else ())
        got_loss, got_d = dask.compute(loss, d)
        ref_loss, ref_d = oracle_softmax_loss(s, target, reduction=reduction, **kw)
        np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12)
        np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


def test_merge_is_associative():
    """The tree may group the class chunks any way: merging (a, b), c equals a, (b, c) and a, b, c."""
    rng = np.random.default_rng(5)
    s = rng.standard_normal((6, 9)) * 4
    s[0, :3] = -np.inf
    q = rng.random((6, 9))
    from xsoftmax._engines._dask_classes import _block_state

    for layout in (_Layout(False, True), _Layout(True, True), _Layout(True, False)):
        parts = []
        for j in range(3):
            yq = q[:, 3 * j : 3 * j + 3] if layout.probabilities else np.full(6, 4)
            w = np.linspace(0.5, 1.5, 9)[3 * j : 3 * j + 3]
            parts.append(_block_state(s[:, 3 * j : 3 * j + 3], yq, w, np.array([3 * j]), layout=layout,
                                      softcap=None, cdt=np.float64))  # fmt: skip
        a, b, c = parts
        flat = _merge(np.concatenate(parts, axis=1), layout=layout)
        left = _merge(np.concatenate([_merge(np.concatenate([a, b], axis=1), layout=layout), c], axis=1),
                      layout=layout)  # fmt: skip
        right = _merge(np.concatenate([a, _merge(np.concatenate([b, c], axis=1), layout=layout)], axis=1),
                       layout=layout)  # fmt: skip
        whole = _block_state(s, q if layout.probabilities else np.full(6, 4), np.linspace(0.5, 1.5, 9),
                             np.array([0]), layout=layout, softcap=None, cdt=np.float64)  # fmt: skip
        for merged in (flat, left, right):
            np.testing.assert_allclose(merged, whole, rtol=1e-13, atol=1e-12)


def test_bad_label_raises_at_compute_naming_the_row():
    s, y, _, _ = _problem(1)
    y = np.abs(y)
    y[23] = C + 2
    ds = da.from_array(s, chunks=(10, 4))
    with no_compute():
        loss, d = xs.softmax_loss(ds, da.from_array(y, chunks=10), label_smoothing=0.1)
    with pytest.raises(ValueError, match=rf"y\[23\] = {C + 2} is out of range"):
        loss.compute()
    with pytest.raises(ValueError, match=r"y\[23\]"):
        d.compute()  # the gradient alone depends on the checked labels too


def _scores_readers(graph_arrays, scores) -> dict:
    from dask.highlevelgraph import HighLevelGraph

    graph = HighLevelGraph.merge(*(a.__dask_graph__() for a in graph_arrays))
    deps = graph.get_all_dependencies()
    blocks = set(dict(scores.__dask_graph__()))
    return {b: [k for k, v in deps.items() if b in v] for b in blocks}


#: A bound on the tasks the engine adds for I row blocks and J class blocks. Measured
#: (labels with weight, ignore_index, smoothing, z-loss, softcap; probabilities a bit fewer):
#: 4x4: 103, 16x4: 379, 4x16: 299, 32x32: 3841. Per block: row state, the reduction's
#: identity chunk, gradient, ~1/4 merge; per row block: label check, D and V parts, their and
#: the loss's tree sums, merge aggregate, row task and two getters; per class block: the
#: weight's rechunk and the column offsets.
PER_BLOCK, PER_ROW_BLOCK, PER_CLASS_BLOCK, FIXED = 3.5, 12, 4, 24


@pytest.mark.parametrize("probabilities", [False, True], ids=["labels", "probabilities"])
@pytest.mark.parametrize("shape", [(4, 4), (16, 4), (4, 16), (32, 32)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_graph_is_linear_in_blocks(shape, probabilities):
    row_blocks, class_blocks = shape
    n, c = 8 * row_blocks, 2 * class_blocks
    s, y, q, w = _problem(2, n=n, c=c)
    ds = da.from_array(s, chunks=(8, 2))
    dy = da.from_array(q if probabilities else y, chunks=(8, 2) if probabilities else 8)
    dw = da.from_array(w, chunks=c)
    inputs = graph_size(ds, dy, dw)
    kw = dict(weight=dw, label_smoothing=0.1, z_loss=1e-3, softcap=5.0)
    if not probabilities:
        kw["ignore_index"] = IGNORE
    loss, d = softmax_loss(ds, dy, **kw)
    added = graph_size(loss, d) - inputs
    blocks = row_blocks * class_blocks
    bound = PER_BLOCK * blocks + PER_ROW_BLOCK * row_blocks + PER_CLASS_BLOCK * class_blocks + FIXED
    assert added <= bound, (added, blocks)
    # Each scores block is read twice: its row state, then its gradient.
    readers = _scores_readers([loss, d], ds)
    assert all(len(r) == 2 for r in readers.values()), readers
    got_loss, got_d = dask.compute(loss, d)
    ref_loss, ref_d = oracle_softmax_loss(s, q if probabilities else y, **(kw | {"weight": w}))
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


def test_no_warning_and_nothing_computed_with_unknown_row_chunks():
    s, y, q, _ = _problem(4)
    s[10:20, 0] = -5.0  # the second row block is masked out entirely: an empty block
    keep = s[:, 0] > 0
    ds = da.from_array(s, chunks=(10, 3))
    mask = ds[:, 0] > 0
    for target in (y, q):
        dt = da.from_array(target, chunks=(10, 3) if target.ndim == 2 else 10)
        kw = dict(z_loss=1e-2, softcap=3.0) | ({} if target.ndim == 2 else {"ignore_index": IGNORE})
        with warnings.catch_warnings(), no_compute():
            warnings.simplefilter("error")
            loss, d = softmax_loss(ds[mask], dt[mask], **kw)
        ref_loss, ref_d = oracle_softmax_loss(s[keep], target[keep], **kw)
        got_loss, got_d = dask.compute(loss, d)
        np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12)
        np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


@pytest.mark.distributed
def test_class_chunks_on_a_local_cluster(dask_temporary_directory):
    distributed = pytest.importorskip("distributed")
    s, y, q, w = _problem(6, n=96, c=C)
    kw = dict(label_smoothing=0.1, z_loss=1e-2, softcap=4.0)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="1GiB",
        local_directory=dask_temporary_directory,
    ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
        for target, extra in ((y, {"ignore_index": IGNORE}), (q, {})):
            ds = da.from_array(s, chunks=(24, C // 4))
            dt = da.from_array(target, chunks=(24, C // 4) if target.ndim == 2 else 24)
            loss, d = softmax_loss(ds, dt, weight=da.from_array(w, chunks=C), **kw, **extra)
            got_loss, got_d = client.compute([loss, d], sync=True)
            ref_loss, ref_d = oracle_softmax_loss(s, target, weight=w, **kw, **extra)
            np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12)
            np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)


def test_first_engine_import_from_many_dask_threads():
    """A fresh process whose first NumPy-engine lookup happens in several Dask threads at once.

    A thread must not take the half-imported module from ``sys.modules``
    ("partially initialized module ... has no attribute 'softmax_loss'").
    """
    import subprocess
    import sys

    code = (
        "import numpy as np, dask, dask.array as da, xsoftmax as xs\n"
        "s = da.from_array(np.random.default_rng(0).standard_normal((64, 5)), chunks=(4, -1))\n"
        "y = da.from_array(np.arange(64) % 5, chunks=4)\n"
        "dask.compute(*xs.softmax_loss(s, y), scheduler='threads', num_workers=8)\n"
    )
    for _ in range(3):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]


def test_gradient_without_in_place_assignment(monkeypatch):
    """Chunk types without integer-array assignment subtract the label term with a mask instead."""
    import xsoftmax._engines._dask_classes as classes

    opts = dict(weighted=True, ignore_index=IGNORE, label_smoothing=0.1, z_loss=1e-2, softcap=2.0)
    expected = _run("uneven", False, "mean", opts)
    monkeypatch.setattr(classes, "_MUTABLE", ())
    got_loss, got_d, ref_loss, ref_d = _run("uneven", False, "mean", opts)
    np.testing.assert_array_equal(got_d, expected[1])
    np.testing.assert_allclose(got_d, ref_d, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-12)
