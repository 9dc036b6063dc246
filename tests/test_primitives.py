"""logsumexp, softmax and log_softmax against float64 NumPy and torch, on every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import (
    assert_close,
    dtype_of,
    has_float16,
    have_torch,
    on,
    ref_log_softmax,
    ref_logsumexp,
    ref_softmax,
)

import xsoftmax as xs

X = np.random.default_rng(0).standard_normal((4, 3, 5)) * 4.0
PAIRS = ((xs.logsumexp, ref_logsumexp), (xs.softmax, ref_softmax), (xs.log_softmax, ref_log_softmax))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_logsumexp(xp, axis):
    for keepdims in (False, True):
        out = xs.logsumexp(on(xp, X), axis=axis, keepdims=keepdims)
        assert_close(out, ref_logsumexp(X, axis=axis, keepdims=keepdims), xp, dtype=xp.float64)
    if have_torch():
        import torch

        assert_close(out, torch.logsumexp(torch.tensor(X), dim=axis, keepdim=True).numpy(), xp)


@pytest.mark.parametrize("axis", [0, -1])
def test_softmax(xp, axis):
    out = xs.softmax(on(xp, X), axis=axis)
    assert_close(out, ref_softmax(X, axis=axis), xp, dtype=xp.float64)
    assert_close(xp.sum(out, axis=axis), np.ones(np.delete(X.shape, axis)), xp)
    if have_torch():
        import torch

        assert_close(out, torch.softmax(torch.tensor(X), dim=axis).numpy(), xp)


@pytest.mark.parametrize("axis", [1, -1])
def test_log_softmax(xp, axis):
    out = xs.log_softmax(on(xp, X), axis=axis)
    assert_close(out, ref_log_softmax(X, axis=axis), xp, dtype=xp.float64)
    if have_torch():
        import torch

        assert_close(out, torch.log_softmax(torch.tensor(X), dim=axis).numpy(), xp)


def test_one_dimensional_input(xp):
    v = np.array([0.5, -1.0, 2.0, 0.0])
    assert_close(xs.logsumexp(on(xp, v)), math.log(np.exp(v).sum()), xp)
    assert_close(xs.softmax(on(xp, v)), np.exp(v) / np.exp(v).sum(), xp)
    assert_close(xs.log_softmax(on(xp, v)), v - math.log(np.exp(v).sum()), xp)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_low_precision_returns_input_dtype(xp, dtype):
    if dtype == "float16" and not has_float16(xp):
        pytest.skip("array_api_strict has no float16")
    x = X.astype(dtype).astype(np.float64)  # representable values
    dt = dtype_of(xp, dtype)
    for f, ref in PAIRS:
        out = f(on(xp, x, dtype))
        assert_close(out, ref(x), xp, dtype=dt)


def test_float16_logsumexp_does_not_overflow(xp):
    """70000 ones: Σ exp(0) = 70000 > 65504 (float16 max); log-sum-exp = 1 + log 70000."""
    if not has_float16(xp):
        pytest.skip("array_api_strict has no float16")
    out = xs.logsumexp(on(xp, np.ones(70000), "float16"))
    assert_close(out, 1 + math.log(70000), xp, dtype=dtype_of(xp, "float16"))
    p = xs.softmax(on(xp, np.zeros(70000), "float16"))
    assert_close(p[:2], [1 / 70000, 1 / 70000], xp, atol=1e-7)


def test_extreme_values(xp):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, 1e4]])
    assert_close(xs.logsumexp(on(xp, x)), ref_logsumexp(x), xp)
    assert_close(xs.softmax(on(xp, x)), ref_softmax(x), xp)
    assert_close(xs.log_softmax(on(xp, x)), ref_log_softmax(x), xp)
    assert_close(xs.logsumexp(on(xp, x)), [1e4, -1e4 + math.log(3), 1e4 + math.log(3)], xp)


# log(0) = −inf is the right answer for an all −inf row; NumPy says so with a warning
@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
def test_minus_inf(xp):
    """−inf entries get p = 0 and log p = −inf; a row of only −inf has lse = −inf."""
    x = np.array([[-np.inf, 0.0, 1.0], [-np.inf, -np.inf, 2.0], [-np.inf, -np.inf, -np.inf]])
    lse = xs.to_numpy(xs.logsumexp(on(xp, x)))
    np.testing.assert_allclose(lse[:2], [math.log(1 + math.e), 2.0], rtol=1e-12)
    assert np.isneginf(lse[2])
    p = xs.to_numpy(xs.softmax(on(xp, x[:2])))
    np.testing.assert_allclose(p, [[0.0, 1 / (1 + math.e), math.e / (1 + math.e)], [0, 0, 1]], rtol=1e-12)
    logp = xs.to_numpy(xs.log_softmax(on(xp, x[:2])))
    assert np.isneginf(logp[0, 0]) and np.isneginf(logp[1, 0]) and logp[1, 2] == 0.0
    np.testing.assert_allclose(logp[0, 1:], ref_log_softmax(x[:1])[0, 1:], rtol=1e-12)


def test_log_softmax_is_not_log_of_softmax(xp):
    """A class 800 below the max: softmax underflows to 0 but log_softmax is exactly −800."""
    x = np.array([[0.0, -800.0]])
    logp = xs.to_numpy(xs.log_softmax(on(xp, x)))
    assert logp[0, 1] == -800.0
    assert xs.to_numpy(xs.softmax(on(xp, x)))[0, 1] == 0.0


def test_primitives_stay_lazy_on_dask():
    da = pytest.importorskip("dask.array")
    from _helpers import no_compute

    x = da.from_array(X, chunks=(2, 3, 5))
    with no_compute():
        outs = [xs.logsumexp(x), xs.softmax(x, axis=0), xs.log_softmax(x)]
    for out, ref in zip(outs, (ref_logsumexp(X), ref_softmax(X, axis=0), ref_log_softmax(X)), strict=True):
        assert isinstance(out, da.Array)
        np.testing.assert_allclose(out.compute(), ref, rtol=1e-12)


def test_primitives_under_jax_jit():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    f = jax.jit(lambda x: (xs.logsumexp(x, axis=0), xs.softmax(x), xs.log_softmax(x, axis=1)))
    lse, p, logp = f(jnp.asarray(X))
    assert_close(lse, ref_logsumexp(X, axis=0), jnp)
    assert_close(p, ref_softmax(X), jnp)
    assert_close(logp, ref_log_softmax(X, axis=1), jnp)


def test_bfloat16_on_torch_returns_bfloat16():
    torch = pytest.importorskip("torch")
    x = torch.tensor(X[0], dtype=torch.bfloat16)
    exact = x.double().numpy()
    for f, ref in PAIRS:
        out = f(x)
        assert out.dtype == torch.bfloat16
        np.testing.assert_allclose(out.double().numpy(), ref(exact), rtol=4e-2, atol=2e-2)
