"""Probability targets, K-dimensional batches, z-loss and softcap (issue 15) against the float64 oracle.

Every combination goes through ``xs.softmax_loss`` with the reference engine
on every backend (JAX also under ``jax.jit``, Dask without a compute during
the call) and with ``engine="auto"`` on NumPy, and is compared with
``tests/_oracle.py`` called with the same keyword arguments.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from _oracle import oracle_softmax_loss

import xsoftmax as xs

from _helpers import assert_close, dtype_of, is_backend, no_compute, on

C = 5
SHAPES = {"2d": (6, C), "k1": (3, C, 4), "k2": (2, C, 3, 2)}
IGNORE = -100

LABEL_OPTIONS = {
    "plain": {},
    "z": {"z_loss": 0.3},
    "cap": {"softcap": 2.5},
    "z+cap": {"z_loss": 0.2, "softcap": 1.5},
    "w+ii+z": {"weight": True, "ignore_index": IGNORE, "z_loss": 0.1},
    "all": {"weight": True, "ignore_index": IGNORE, "label_smoothing": 0.2, "z_loss": 0.05, "softcap": 3.0},
}
PROB_OPTIONS = {
    "plain": {},
    "w": {"weight": True},
    "eps": {"label_smoothing": 0.3},
    "z+cap": {"z_loss": 0.2, "softcap": 1.5},
    "all": {"weight": True, "label_smoothing": 0.1, "z_loss": 0.05, "softcap": 3.0},
}
CASES = [("labels", k, v) for k, v in LABEL_OPTIONS.items()] + [
    ("probs", k, v) for k, v in PROB_OPTIONS.items()
]
CASE_IDS = [f"{t}-{k}" for t, k, _ in CASES]


def problem(shape, target, options, seed=0):
    """Host float64 scores, targets and options (weight filled in, some positions ignored)."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(shape) * 3.0
    opts = dict(options)
    if opts.get("weight"):
        opts["weight"] = rng.random(C) + 0.5
    if target == "probs":
        y = rng.random(shape)  # rows need not sum to 1 (as in torch)
    else:
        y = rng.integers(0, C, size=(shape[0], *shape[2:]))
        if "ignore_index" in opts:
            y.reshape(-1)[::3] = IGNORE
    return scores, y, opts


def run(xp, scores, y, opts, *, dtype="float64", **kw):
    weight = opts.get("weight")
    args = {**opts, "weight": None if weight is None else on(xp, weight, dtype_of(xp, dtype))}
    return xs.softmax_loss(on(xp, scores, dtype_of(xp, dtype)), on(xp, y), **args, **kw)


@pytest.mark.parametrize("engine", ["reference", "auto"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize(("target", "name", "options"), CASES, ids=CASE_IDS)
def test_numpy_every_combination(target, name, options, shape, reduction, engine):
    scores, y, opts = problem(SHAPES[shape], target, options)
    loss, d = xs.softmax_loss(scores, y, reduction=reduction, engine=engine, **opts)
    want_loss, want_d = oracle_softmax_loss(scores, y, reduction=reduction, **opts)
    assert loss.shape == want_loss.shape and d.shape == scores.shape
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(d, want_d, rtol=1e-12, atol=1e-13)


BACKEND_CASES = [c for c in CASES if c[1] in ("plain", "all", "z+cap")]


@pytest.mark.parametrize(("shape", "dtype"), [("2d", "float32"), ("k1", "float64"), ("k2", "float64")])
@pytest.mark.parametrize(
    ("target", "name", "options"), BACKEND_CASES, ids=[f"{t}-{k}" for t, k, _ in BACKEND_CASES]
)
def test_reference_engine_on_every_backend(xp, target, name, options, shape, dtype):
    scores, y, opts = problem(SHAPES[shape], target, options, seed=1)
    scores = scores.astype(dtype).astype(np.float64)  # the oracle sees the same rounded inputs
    for reduction in ("mean", "none"):
        if is_backend(xp, "dask"):
            with no_compute():
                loss, d = run(xp, scores, y, opts, dtype=dtype, reduction=reduction, engine="reference")
        else:
            loss, d = run(xp, scores, y, opts, dtype=dtype, reduction=reduction, engine="reference")
        want_loss, want_d = oracle_softmax_loss(scores, y, reduction=reduction, **opts)
        tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {}
        assert_close(loss, want_loss, xp, dtype=dtype_of(xp, dtype), **tol)
        assert_close(d, want_d, xp, dtype=dtype_of(xp, dtype), **tol)
        assert tuple(d.shape) == scores.shape


@pytest.mark.parametrize("shape", ["2d", "k2"])
@pytest.mark.parametrize(
    ("target", "name", "options"), BACKEND_CASES, ids=[f"{t}-{k}" for t, k, _ in BACKEND_CASES]
)
def test_jax_under_jit(target, name, options, shape):
    jax = pytest.importorskip("jax")
    scores, y, opts = problem(SHAPES[shape], target, options, seed=2)
    weight = opts.pop("weight", None)

    @jax.jit
    def f(s, y, w):
        return xs.softmax_loss(s, y, weight=w, reduction="mean", **opts)

    w = None if weight is None else jax.numpy.asarray(weight)
    loss, d = f(jax.numpy.asarray(scores), jax.numpy.asarray(y), w)
    want_loss, want_d = oracle_softmax_loss(scores, y, weight=weight, **opts)
    np.testing.assert_allclose(np.asarray(loss), want_loss, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(d), want_d, rtol=1e-12, atol=1e-14)


def test_bad_labels_poison_their_positions_under_jit():
    jax = pytest.importorskip("jax")
    scores, y, _ = problem(SHAPES["k1"], "labels", {})
    y[1, 2] = C
    rows = jax.jit(lambda s, y: xs.softmax_loss(s, y, reduction="none", z_loss=0.1, softcap=2.0)[0])(
        jax.numpy.asarray(scores), jax.numpy.asarray(y)
    )
    nan = np.isnan(np.asarray(rows))
    assert nan[1, 2] and nan.sum() == 1
    with pytest.raises(ValueError, match=r"y\[6\] = 5 is out of range"):  # eager: flat position 1·4 + 2
        xs.softmax_loss(jax.numpy.asarray(scores), jax.numpy.asarray(y))


def test_dask_k_dim_is_lazy_and_exact():
    da = pytest.importorskip("dask.array")
    scores, y, opts = problem(SHAPES["k2"], "labels", LABEL_OPTIONS["all"], seed=3)
    with no_compute():
        loss, d = xs.softmax_loss(
            da.from_array(scores, chunks=(1, C, 3, 2)), da.from_array(y, chunks=(1, 3, 2)),
            **{**opts, "weight": da.from_array(opts["weight"])}, reduction="none",
        )  # fmt: skip
    want_loss, want_d = oracle_softmax_loss(scores, y, reduction="none", **opts)
    np.testing.assert_allclose(loss.compute(), want_loss, rtol=1e-12)
    np.testing.assert_allclose(d.compute(), want_d, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("engine", ["reference", "auto"])
@pytest.mark.parametrize("target", ["labels", "probs"])
def test_float16_in_float32(target, engine):
    scores, y, opts = problem(
        SHAPES["k1"], target, LABEL_OPTIONS["all"] if target == "labels" else PROB_OPTIONS["all"]
    )
    s16 = scores.astype(np.float16)
    loss, d = xs.softmax_loss(s16, y.astype(np.float16) if target == "probs" else y, engine=engine, **opts)
    assert loss.dtype == d.dtype == np.float16
    q = y.astype(np.float16).astype(np.float64) if target == "probs" else y
    want_loss, want_d = oracle_softmax_loss(s16.astype(np.float64), q, **opts)
    np.testing.assert_allclose(loss.astype(np.float64), want_loss, rtol=3e-3)
    np.testing.assert_allclose(d.astype(np.float64), want_d, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("engine", ["reference", "auto"])
@pytest.mark.parametrize("where", ["new", "strided", "in-place"])
@pytest.mark.parametrize("shape", ["k1", "k2"])
def test_out_k_dim(shape, where, engine):
    scores, y, opts = problem(SHAPES[shape], "labels", LABEL_OPTIONS["all"], seed=4)
    want_loss, want_d = oracle_softmax_loss(scores, y, reduction="sum", **opts)
    if where == "in-place":
        s = scores.copy()
        out = s
    elif where == "strided":
        s = scores
        out = np.zeros((scores.shape[0], 2 * C, *scores.shape[2:]))[:, ::2]
    else:
        s, out = scores, np.empty_like(scores)
    loss, d = xs.softmax_loss(s, y, reduction="sum", engine=engine, out=out, **opts)
    assert d is out
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(out, want_d, rtol=1e-12, atol=1e-14)


def test_out_on_torch_with_the_reference_engine():
    torch = pytest.importorskip("torch")
    scores, y, opts = problem(SHAPES["k2"], "probs", PROB_OPTIONS["all"], seed=5)
    out = torch.empty(scores.shape, dtype=torch.float64)
    opts["weight"] = torch.from_numpy(opts["weight"])
    _, d = xs.softmax_loss(torch.from_numpy(scores), torch.from_numpy(y), engine="reference", out=out, **opts)
    assert d is out
    np.testing.assert_allclose(out.numpy(), oracle_softmax_loss(scores, y, **opts)[1], rtol=1e-12)


def test_torch_cpu_auto_route_takes_the_new_options():
    torch = pytest.importorskip("torch")
    scores, y, opts = problem(SHAPES["k1"], "labels", LABEL_OPTIONS["all"], seed=6)
    loss, d = xs.softmax_loss(
        torch.from_numpy(scores), torch.from_numpy(y), **{**opts, "weight": torch.from_numpy(opts["weight"])}
    )
    assert isinstance(loss, torch.Tensor) and isinstance(d, torch.Tensor)
    want_loss, want_d = oracle_softmax_loss(scores, y, **opts)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-12)
    np.testing.assert_allclose(d.numpy(), want_d, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("engine", ["reference", "auto"])
@pytest.mark.parametrize("target", ["labels", "probs"])
def test_inputs_are_not_modified(target, engine):
    scores, y, opts = problem(
        SHAPES["k2"], target, LABEL_OPTIONS["all"] if target == "labels" else PROB_OPTIONS["all"]
    )
    copies = [scores.copy(), y.copy(), opts["weight"].copy()]
    xs.softmax_loss(scores, y, engine=engine, **opts)
    for a, b in zip((scores, y, opts["weight"]), copies, strict=True):
        np.testing.assert_array_equal(a, b)


def test_numpy_k_dim_runs_on_strided_views_not_a_transposed_copy(monkeypatch):
    import xsoftmax._batch as batch
    import xsoftmax._engines.reference as reference

    monkeypatch.setattr(batch, "GROUP_ELEMENTS", 1)  # samples as large as a real image's
    scores, y, opts = problem(SHAPES["k2"], "probs", PROB_OPTIONS["all"], seed=7)
    seen = []
    engine = reference.softmax_loss

    def spy(inp, /, *, out=None):
        seen.append((inp.scores, inp.y, out, inp.denom, inp.zdenom))
        return engine(inp, out=out)

    monkeypatch.setattr(reference, "softmax_loss", spy)
    loss, d = xs.softmax_loss(scores, y, engine="reference", **opts)
    assert len(seen) == scores.shape[0]  # one call per sample
    for s, q, out, denom, zdenom in seen:
        assert s.shape == (6, C) and s.strides[1] == 6 * 8  # class stride d = 3·2
        assert np.shares_memory(s, scores) and np.shares_memory(q, y) and np.shares_memory(out, d)
        assert float(denom) == float(zdenom) == 12.0  # the whole batch's R positions
    np.testing.assert_allclose(loss, oracle_softmax_loss(scores, y, **opts)[0], rtol=1e-12)


@pytest.mark.parametrize("target", ["labels", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_small_k_dim_samples_run_a_group_at_a_time(monkeypatch, target, reduction):
    """Many small samples: groups of them copied into row-major buffers, one engine call per group."""
    import xsoftmax._batch as batch
    import xsoftmax._engines.numpy as numpy_engine

    rng = np.random.default_rng(11)
    n, d1, d2 = 13, 2, 3
    scores = rng.standard_normal((n, C, d1, d2)) * 3
    if target == "probs":
        y = rng.random((n, C, d1, d2))
        opts = {"label_smoothing": 0.1, "z_loss": 0.05, "softcap": 4.0}
    else:
        y = rng.integers(0, C, (n, d1, d2))
        y[0, 0, 0] = -1
        opts = {"weight": rng.random(C) + 0.5, "ignore_index": -1, "z_loss": 0.05}
    monkeypatch.setattr(batch, "GROUP_ELEMENTS", 4 * C * d1 * d2)  # groups of 4 samples, the last of 1
    monkeypatch.setattr(batch, "GROUP_SHARE", 1)
    seen = []
    engine = numpy_engine.softmax_loss

    def spy(inp, /, *, out=None, **kw):
        seen.append((inp.scores.shape, inp.scores.flags.c_contiguous, out.flags.c_contiguous))
        return engine(inp, out=out, **kw)

    monkeypatch.setattr(numpy_engine, "softmax_loss", spy)
    copies = (scores.copy(), y.copy())
    loss, d = xs.softmax_loss(scores, y, reduction=reduction, engine="fused", **opts)
    assert [shape for shape, _, _ in seen] == [(4 * 6, C)] * 3 + [(6, C)]
    assert all(contiguous and out_contiguous for _, contiguous, out_contiguous in seen)
    want_loss, want_d = oracle_softmax_loss(scores, y, reduction=reduction, **opts)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d, want_d, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(scores, copies[0])
    np.testing.assert_array_equal(y, copies[1])


@pytest.mark.parametrize("target", ["labels", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_single_row_of_shape_c(target, reduction):
    rng = np.random.default_rng(8)
    s = rng.standard_normal(C)
    y = rng.random(C) if target == "probs" else np.int64(2)
    loss, d = xs.softmax_loss(s, np.asarray(y), reduction=reduction, z_loss=0.1, softcap=2.0)
    y2 = np.asarray(y).reshape((1, C) if target == "probs" else (1,))
    want_loss, want_d = oracle_softmax_loss(s[None], y2, reduction=reduction, z_loss=0.1, softcap=2.0)
    assert loss.shape == () and d.shape == (C,)
    np.testing.assert_allclose(loss, want_loss.reshape(()), rtol=1e-12)
    np.testing.assert_allclose(d, want_d[0], rtol=1e-12)


def test_empty_k_dim_batches_follow_torch():
    s = np.zeros((0, C, 3))
    assert np.isnan(xs.softmax_loss(s, np.zeros((0, 3), dtype=np.int64))[0])
    assert xs.softmax_loss(s, np.zeros((0, 3), dtype=np.int64), reduction="none")[0].shape == (0, 3)
    assert np.isnan(xs.softmax_loss(s, np.zeros((0, C, 3)))[0])  # probabilities: R = 0 rows
    loss, d = xs.softmax_loss(np.zeros((2, C, 0)), np.zeros((2, 0), dtype=np.int64), reduction="sum")
    assert float(loss) == 0.0 and d.shape == (2, C, 0)


def test_softcap_keeps_huge_logits_finite():
    scores = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]])
    loss, d = xs.softmax_loss(scores, np.array([1, 1]), softcap=10.0, z_loss=0.01)
    assert np.isfinite(loss) and np.isfinite(d).all()
    np.testing.assert_allclose(d, oracle_softmax_loss(scores, np.array([1, 1]), softcap=10.0, z_loss=0.01)[1])


# ------------------------------------------------------------------ bad input

S = np.zeros((4, 3))
S3 = np.zeros((4, 3, 2))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"z_loss": -0.1}, ValueError, "z_loss must be a finite float >= 0, got -0.1"),
        ({"z_loss": float("nan")}, ValueError, "z_loss must be a finite float >= 0, got nan"),
        ({"z_loss": float("inf")}, ValueError, "z_loss must be a finite float >= 0, got inf"),
        ({"z_loss": "0.1"}, TypeError, "z_loss must be a float >= 0, got '0.1'"),
        ({"z_loss": True}, TypeError, "z_loss must be a float >= 0, got True"),
        ({"softcap": 0.0}, ValueError, "softcap must be None or a finite float > 0, got 0.0"),
        ({"softcap": -3}, ValueError, "softcap must be None or a finite float > 0, got -3.0"),
        ({"softcap": float("inf")}, ValueError, "softcap must be None or a finite float > 0, got inf"),
        ({"softcap": [1.0]}, TypeError, "softcap must be None or a float > 0, got [1.0]"),
    ],
)
def test_bad_options(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        xs.softmax_loss(S, np.zeros(4, dtype=np.int64), **kwargs)


def test_probability_shape_and_ignore_index_messages():
    with pytest.raises(ValueError, match=re.escape(
        "y: a floating y holds class probabilities and must have the scores' shape (4, 3, 2), "
        "got shape (4, 2)"
    )):  # fmt: skip
        xs.softmax_loss(S3, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=re.escape("the scores' shape (4, 3), got shape (4, 4)")):
        xs.softmax_loss(S, np.zeros((4, 4)))
    with pytest.raises(ValueError, match=re.escape(
        "y has the scores' shape (4, 3, 2) but an integer dtype: pass class indices of shape (4, 2)"
    )):  # fmt: skip
        xs.softmax_loss(S3, np.zeros((4, 3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=re.escape(
        "ignore_index=-100 is not supported with probability targets (a floating y)"
    )):  # fmt: skip
        xs.softmax_loss(S, np.zeros((4, 3)), ignore_index=-100)


def test_k_dim_label_shape_messages():
    with pytest.raises(ValueError, match=re.escape(
        "y must have shape (4, 2) (scores (4, 3, 2) without the class axis 1), got shape (4, 3)"
    )):  # fmt: skip
        xs.softmax_loss(S3, np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=re.escape("y must have shape (4, 2) (scores (4, 3, 2)")):
        xs.softmax_loss(S3, np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"y\[3\] = 3 is out of range: labels must be in \[0, 3\)"):
        xs.softmax_loss(S3, np.array([[0, 1], [2, 3], [0, 0], [1, 1]]))
    with pytest.raises(
        ValueError, match=re.escape("scores must have shape (N, C), (N, C, d1, ..., dk) or (C,)")
    ):
        xs.softmax_loss(np.float64(1.0) * np.ones(()), np.int64(0) * np.ones((), dtype=np.int64))
    with pytest.raises(
        ValueError, match=re.escape("out must have the shape of scores (4, 3, 2), got (4, 6)")
    ):
        xs.softmax_loss(S3, np.zeros((4, 2), dtype=np.int64), out=np.zeros((4, 6)))


def test_probabilities_may_have_another_floating_dtype():
    scores, y, opts = problem(SHAPES["k1"], "probs", PROB_OPTIONS["all"], seed=9)
    loss = xs.softmax_loss(scores, y.astype(np.float32), **opts)[0]
    np.testing.assert_allclose(loss, oracle_softmax_loss(scores, y.astype(np.float32), **opts)[0], rtol=1e-12)
