"""Hypothesis properties of softmax_loss and the primitives, on every backend.

Shapes include N = 1, C = 1, C = 2 and C = 3000; dtypes float16 (where the
backend has it), float32, float64; logits up to ±1e4 and −inf masks.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from _helpers import (
    TOLERANCES,
    assert_close,
    dtype_of,
    has_float16,
    on,
    ref_log_softmax,
    ref_logsumexp,
    ref_softmax,
    ref_softmax_loss,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import xsoftmax as xs
from xsoftmax._backend import array_namespace, backend_name

PROPERTY = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run and every machine
    database=None,
)

DTYPES = ("float64", "float32", "float16")


@st.composite
def problems(draw):
    """A random softmax_loss call: host float64 data already rounded to ``dtype``."""
    n = draw(st.sampled_from([1, 1, 2, 3, 5, 8]))
    c = draw(st.sampled_from([1, 2, 2, 3, 7, 3000]))
    if c == 3000:
        n = min(n, 3)
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["normal", "extreme", "masked"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    y = rng.integers(0, c, size=n)
    if kind == "normal":
        scores = rng.standard_normal((n, c)) * draw(st.sampled_from([0.1, 3.0, 50.0]))
    elif kind == "extreme":
        scores = rng.choice([-1e4, -1.0, 0.0, 2.5, 1e4], size=(n, c))
    else:  # −inf masks, never on the target
        scores = rng.standard_normal((n, c))
        mask = rng.random((n, c)) < 0.4
        mask[np.arange(n), y] = False
        scores[mask] = -np.inf
    ignore_index = draw(st.sampled_from([None, -100] + ([1] if c > 2 else [])))
    if ignore_index is not None:
        drop = rng.random(n) < 0.3
        drop[0] = False  # keep one row so "mean" has a nonzero denominator
        y = np.where(drop, ignore_index, y)
        if ignore_index == 1 and y[0] == 1:
            y[0] = 0
    weight = rng.uniform(0.1, 3.0, c) if draw(st.booleans()) else None
    host = np.float16 if dtype == "float16" else np.dtype(dtype).type
    scores = scores.astype(host).astype(np.float64)
    if weight is not None:
        weight = weight.astype(host).astype(np.float64)
    return {
        "scores": scores,
        "y": y,
        "dtype": dtype,
        "weight": weight,
        "ignore_index": ignore_index,
        "label_smoothing": draw(st.sampled_from([0.0, 0.0, 0.1, 1.0])),
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
    }


def _run(xp, p):
    dtype = p["dtype"]
    s = on(xp, p["scores"], dtype)
    w = None if p["weight"] is None else on(xp, p["weight"], dtype)
    opts = tuple((k, p[k]) for k in ("ignore_index", "label_smoothing", "reduction"))
    f = _jitted_loss(opts) if backend_name(xp) == "jax" else functools.partial(xs.softmax_loss, **dict(opts))
    return s, f(s, on(xp, p["y"]), weight=w)


@functools.cache
def _jitted_loss(opts):
    """One jitted function per option set, so JAX's compile cache is reused."""
    import jax

    return jax.jit(functools.partial(xs.softmax_loss, **dict(opts)))


@functools.cache
def _jitted_primitives():
    import jax

    return jax.jit(lambda v: (xs.softmax(v), xs.log_softmax(v), xs.logsumexp(v)))


def _reference(p):
    return ref_softmax_loss(
        p["scores"],
        p["y"],
        weight=p["weight"],
        ignore_index=p["ignore_index"],
        label_smoothing=p["label_smoothing"],
        reduction=p["reduction"],
    )


def _tol(p, c):
    r, a = TOLERANCES[p["dtype"]]
    if p["dtype"] != "float64":
        # a loss of 2e4 (logits 1e4 apart) carries the input's relative error;
        # many classes add rounding to Σ exp in float32
        a = a * (1 + c / 100)
    return r, a


def _fixed(scores, y, dtype, **opts):
    """An explicit example, so that the edge shapes are always covered."""
    base = {"weight": None, "ignore_index": None, "label_smoothing": 0.0, "reduction": "mean"}
    arrays = {"scores": np.asarray(scores, dtype=np.float64), "y": np.asarray(y)}
    return {**base, **arrays, "dtype": dtype, **opts}


_WIDE = np.random.default_rng(1).standard_normal((2, 3000)) * 10
_WIDE[0, :1500] = -np.inf  # masked half, target (2999) kept


@PROPERTY
@given(p=problems())
@example(p=_fixed([[0.5]], [0], "float16"))  # N = 1, C = 1
@example(p=_fixed([[1e4, -1e4], [-1e4, 1e4]], [0, 0], "float32", reduction="none"))  # C = 2, ±1e4
@example(p=_fixed(_WIDE, [2999, 7], "float32", label_smoothing=0.1, weight=np.linspace(0.5, 2, 3000)))
def test_softmax_loss_properties(xp, p):
    if p["dtype"] == "float16" and not has_float16(xp):
        p = {**p, "dtype": "float32"}
    n, c = p["scores"].shape
    s, (loss, d) = _run(xp, p)
    dt = dtype_of(xp, p["dtype"])

    # in the input's namespace, dtype and shape
    for out in (loss, d):
        assert backend_name(array_namespace(out)) == backend_name(xp)
        assert out.dtype == dt
    assert tuple(d.shape) == (n, c)
    assert tuple(loss.shape) == ((n,) if p["reduction"] == "none" else ())

    ref_loss, ref_d = _reference(p)
    r, a = _tol(p, c)
    assert_close(loss, ref_loss, xp, rtol=r, atol=a, like=s)
    assert_close(d, ref_d, xp, rtol=r, atol=a, like=s)

    loss_np, d_np = xs.to_numpy(loss), xs.to_numpy(d)
    # the gradient is finite, and so is the loss unless smoothing meets a −inf logit
    assert np.all(np.isfinite(d_np))
    if not (p["label_smoothing"] and np.isneginf(p["scores"]).any()):
        assert np.all(np.isfinite(loss_np))
    # Σ_k ∂loss/∂s_ik = 0: probabilities and targets both sum to one (any weights)
    row_sums = d_np.astype(np.float64).sum(axis=1)
    scale = max(1.0, float(np.abs(d_np).astype(np.float64).sum(axis=1).max()))
    np.testing.assert_allclose(row_sums, 0.0, atol=(a + 1e-3 * (p["dtype"] == "float16")) * scale * c)


@PROPERTY
@given(p=problems(), shift=st.sampled_from([-50.0, 7.0, 1000.0]))
def test_shift_invariance(xp, p, shift):
    """Adding a constant to every logit changes neither loss nor gradient."""
    p = {**p, "dtype": "float64"}
    _, (loss, d) = _run(xp, p)
    _, (loss2, d2) = _run(xp, {**p, "scores": p["scores"] + shift})
    finite = np.isfinite(xs.to_numpy(loss))
    np.testing.assert_allclose(
        xs.to_numpy(loss2)[finite] if np.ndim(finite) else xs.to_numpy(loss2),
        xs.to_numpy(loss)[finite] if np.ndim(finite) else xs.to_numpy(loss),
        rtol=1e-9, atol=1e-9,
    )
    np.testing.assert_allclose(xs.to_numpy(d2), xs.to_numpy(d), rtol=1e-8, atol=1e-11)


@st.composite
def views(draw):
    """A non-contiguous (transposed or strided) view and the plain data it shows."""
    n = draw(st.integers(1, 6))
    c = draw(st.sampled_from([1, 2, 5, 300]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["transposed", "row-strided", "col-strided"]))
    if kind == "transposed":
        base = rng.standard_normal((c, n)) * 3
        return base, lambda a: a.T, base.T.copy()
    if kind == "row-strided":
        base = rng.standard_normal((2 * n, c)) * 3
        return base, lambda a: a[::2], base[::2].copy()
    base = rng.standard_normal((n, 3 * c)) * 3
    return base, lambda a: a[:, 1::3], base[:, 1::3].copy()


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@PROPERTY
@given(v=views(), dtype=st.sampled_from(["float64", "float32"]), eps=st.sampled_from([0.0, 0.1]))
def test_non_contiguous_inputs(lib, v, dtype, eps):
    base, view, plain = v
    if lib == "numpy":
        s = view(base.astype(dtype))
        y = np.arange(2 * plain.shape[0])[::2] % plain.shape[1]  # a strided label view too
    else:
        torch = pytest.importorskip("torch")
        s = view(torch.tensor(base, dtype=getattr(torch, dtype)))
        y = torch.arange(2 * plain.shape[0])[::2] % plain.shape[1]
    exact = plain.astype(dtype).astype(np.float64)
    loss, d = xs.softmax_loss(s, y, label_smoothing=eps)
    ref_loss, ref_d = ref_softmax_loss(exact, xs.to_numpy(y), label_smoothing=eps)
    r, a = TOLERANCES[dtype]
    np.testing.assert_allclose(xs.to_numpy(loss), ref_loss, rtol=r, atol=a)
    np.testing.assert_allclose(xs.to_numpy(d), ref_d, rtol=r, atol=a)
    assert tuple(d.shape) == tuple(s.shape)
    pairs = ((xs.logsumexp, ref_logsumexp), (xs.softmax, ref_softmax), (xs.log_softmax, ref_log_softmax))
    for f, ref in pairs:
        np.testing.assert_allclose(xs.to_numpy(f(s, axis=0)), ref(exact, axis=0), rtol=r, atol=a)


@PROPERTY
@given(
    shape=st.sampled_from([(1,), (1, 1), (3, 2), (2, 3000), (4, 1, 5)]),
    scale=st.sampled_from([1.0, 100.0, 1e4]),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(DTYPES),
)
def test_primitive_properties(xp, shape, scale, seed, dtype):
    if dtype == "float16" and not has_float16(xp):
        dtype = "float32"
    x = np.random.default_rng(seed).standard_normal(shape) * scale
    x = x.astype(dtype).astype(np.float64)
    arr = on(xp, x, dtype)
    r, a = TOLERANCES[dtype]
    if backend_name(xp) == "jax":
        p, logp, lse = _jitted_primitives()(arr)
    else:
        p, logp, lse = xs.softmax(arr), xs.log_softmax(arr), xs.logsumexp(arr)
    for out in (p, logp, lse):
        assert out.dtype == arr.dtype
        assert backend_name(array_namespace(out)) == backend_name(xp)
    p_np, logp_np, lse_np = (xs.to_numpy(o).astype(np.float64) for o in (p, logp, lse))
    assert np.all((p_np >= 0) & (p_np <= 1))
    assert np.all(logp_np <= 0)
    np.testing.assert_allclose(p_np.sum(axis=-1), 1.0, rtol=0, atol=max(a, 10 * r))
    assert np.all(lse_np >= x.max(axis=-1) - a)

    def rounded(ref):  # e.g. log p = −7e4 is −inf in float16, correctly
        with np.errstate(over="ignore"):
            return ref.astype(dtype).astype(np.float64)

    np.testing.assert_allclose(lse_np, rounded(ref_logsumexp(x)), rtol=r, atol=a)
    np.testing.assert_allclose(p_np, rounded(ref_softmax(x)), rtol=r, atol=a)
    np.testing.assert_allclose(logp_np, rounded(ref_log_softmax(x)), rtol=r, atol=a * max(1.0, scale / 100))
