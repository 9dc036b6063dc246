"""Affine / ReLU layers against float64 loop references and torch autograd, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import xsoftmax as xs

from _helpers import (
    assert_close,
    have_torch,
    no_compute,
    on,
    ref_affine_backward,
    ref_affine_forward,
    ref_relu_backward,
    ref_relu_forward,
)

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 2, 4))  # N = 3, (d1, d2) = (2, 4), D = 8
W = RNG.standard_normal((8, 5))
B = RNG.standard_normal(5)
DOUT = RNG.standard_normal((3, 5))


def _torch_grads(fn, x, w, b, dout):
    """(out, dx, dw, db) of ``fn`` by torch autograd in float64."""
    import torch

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    out = fn(tx.reshape(x.shape[0], -1) @ tw + tb)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()


def test_affine_forward_backward(xp):
    x, w, b = on(xp, X), on(xp, W), on(xp, B)
    out, cache = xs.affine_forward(x, w, b)
    assert_close(out, ref_affine_forward(X, W, B), xp, dtype=xp.float64, like=x)
    dx, dw, db = xs.affine_backward(on(xp, DOUT), cache)
    rdx, rdw, rdb = ref_affine_backward(DOUT, X, W)
    assert tuple(dx.shape) == X.shape
    assert_close(dx, rdx, xp, like=x)
    assert_close(dw, rdw, xp)
    assert_close(db, rdb, xp)
    if have_torch():
        t_out, tdx, tdw, tdb = _torch_grads(lambda a: a, X, W, B, DOUT)
        for mine, theirs in zip((out, dx, dw, db), (t_out, tdx, tdw, tdb), strict=True):
            assert_close(mine, theirs, xp)


def test_relu_forward_backward(xp):
    x = np.array([[-1.5, 0.0, 2.0], [3.0, -0.1, 1e-300]])
    dout = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out, cache = xs.relu_forward(on(xp, x))
    assert_close(out, ref_relu_forward(x), xp, dtype=xp.float64)
    assert_close(out, [[0.0, 0.0, 2.0], [3.0, 0.0, 1e-300]], xp, rtol=0, atol=0)
    dx = xs.relu_backward(on(xp, dout), cache)
    # x = 0 takes the subgradient 0, as PyTorch does
    assert_close(dx, [[0.0, 0.0, 3.0], [4.0, 0.0, 6.0]], xp, rtol=0, atol=0)
    assert_close(dx, ref_relu_backward(dout, x), xp)
    if have_torch():
        import torch

        t = torch.tensor(x, requires_grad=True)
        torch.relu(t).backward(torch.tensor(dout))
        assert_close(dx, t.grad.numpy(), xp)


def test_affine_relu_forward_backward(xp):
    x, w, b = on(xp, X), on(xp, W), on(xp, B)
    out, cache = xs.affine_relu_forward(x, w, b)
    a = ref_affine_forward(X, W, B)
    assert_close(out, ref_relu_forward(a), xp, dtype=xp.float64)
    dx, dw, db = xs.affine_relu_backward(on(xp, DOUT), cache)
    da = ref_relu_backward(DOUT, a)
    rdx, rdw, rdb = ref_affine_backward(da, X, W)
    assert_close(dx, rdx, xp)
    assert_close(dw, rdw, xp)
    assert_close(db, rdb, xp)
    if have_torch():
        import torch

        _, tdx, tdw, tdb = _torch_grads(torch.relu, X, W, B, DOUT)
        for mine, theirs in zip((dx, dw, db), (tdx, tdw, tdb), strict=True):
            assert_close(mine, theirs, xp)


@pytest.mark.parametrize("shape", [(4,), (2, 3), (2, 1, 3, 2)])
def test_affine_input_shapes(xp, shape):
    """x of shape (N,) (D = 1), (N, D) and (N, d1, d2, d3) all flatten to (N, D)."""
    x = RNG.standard_normal(shape)
    d = int(np.prod(shape[1:]))
    w, b = RNG.standard_normal((d, 2)), RNG.standard_normal(2)
    out, cache = xs.affine_forward(on(xp, x), on(xp, w), on(xp, b))
    assert_close(out, ref_affine_forward(x, w, b), xp)
    dout = RNG.standard_normal((shape[0], 2))
    dx, dw, db = xs.affine_backward(on(xp, dout), cache)
    assert tuple(dx.shape) == shape
    for mine, ref in zip((dx, dw, db), ref_affine_backward(dout, x, w), strict=True):
        assert_close(mine, ref, xp)


def test_layers_float32(xp):
    x32 = X.astype(np.float32).astype(np.float64)
    w32 = W.astype(np.float32).astype(np.float64)
    b32 = B.astype(np.float32).astype(np.float64)
    out, cache = xs.affine_relu_forward(*(on(xp, v, "float32") for v in (x32, w32, b32)))
    assert_close(out, ref_relu_forward(ref_affine_forward(x32, w32, b32)), xp, dtype=xp.float32)
    grads = xs.affine_relu_backward(on(xp, DOUT, "float32"), cache)
    for g in grads:
        assert g.dtype == xp.float32


def test_layers_stay_lazy_on_dask():
    da = pytest.importorskip("dask.array")
    x, w, b, dout = (da.from_array(a) for a in (X, W, B, DOUT))
    with no_compute():
        out, cache = xs.affine_relu_forward(x, w, b)
        grads = xs.affine_relu_backward(dout, cache)
        r, rc = xs.relu_forward(x)
        rdx = xs.relu_backward(x, rc)
    a = ref_affine_forward(X, W, B)
    np.testing.assert_allclose(out.compute(), ref_relu_forward(a), rtol=1e-12)
    for g, ref in zip(grads, ref_affine_backward(ref_relu_backward(DOUT, a), X, W), strict=True):
        np.testing.assert_allclose(g.compute(), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rdx.compute(), ref_relu_backward(X, X), rtol=0)


def test_layers_under_jax_jit():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    @jax.jit
    def step(x, w, b, dout):
        out, cache = xs.affine_relu_forward(x, w, b)
        return out, xs.affine_relu_backward(dout, cache)

    out, grads = step(*(jnp.asarray(a) for a in (X, W, B, DOUT)))
    a = ref_affine_forward(X, W, B)
    assert_close(out, ref_relu_forward(a), jnp)
    for g, ref in zip(grads, ref_affine_backward(ref_relu_backward(DOUT, a), X, W), strict=True):
        assert_close(g, ref, jnp)


def test_mixed_float_dtypes_promote(xp):
    """float32 x with float64 w, b: the standard's promotion (torch's ``@`` would refuse)."""
    x32 = X.astype(np.float32).astype(np.float64)
    out, cache = xs.affine_forward(on(xp, x32, "float32"), on(xp, W), on(xp, B))
    assert out.dtype == xp.float64
    assert_close(out, ref_affine_forward(x32, W, B), xp, rtol=1e-12)
    dx, dw, db = xs.affine_backward(on(xp, DOUT), cache)
    for g, ref in zip((dx, dw, db), ref_affine_backward(DOUT, x32, W), strict=True):
        assert_close(g, ref, xp, rtol=1e-12)
