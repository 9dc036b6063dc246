"""linear_softmax_loss and its JAX adapter with z_loss and softcap, against the float64 oracle."""

from __future__ import annotations

import numpy as np
import pytest
from _oracle import oracle_softmax_loss
from test_linear import IGNORE, check, problem, to_backend

import xsoftmax as xs
from xsoftmax._backend import array_namespace, backend_name

EXTRAS = {
    "z": {"z_loss": 1e-2},
    "cap": {"softcap": 2.5},
    "z+cap": {"z_loss": 5e-2, "softcap": 3.0},
    "z+cap+all": {
        "z_loss": 5e-2, "softcap": 3.0, "weight": True, "ignore_index": IGNORE, "label_smoothing": 0.1,
    },
}


def oracle(x, w, b, y, **kw):
    """The oracle's loss and dscores of ``x w + b``, then the affine backward by hand."""
    loss, g = oracle_softmax_loss(x @ w + b, y, **kw)
    return loss, g @ w.T, x.T @ g, g.sum(axis=0)


def setup(name):
    x, w, b, y, weight = problem(seed=4)
    kw = dict(EXTRAS[name])
    if kw.pop("weight", False):
        kw["weight"] = weight
    if "ignore_index" not in kw:
        y = np.where(y == IGNORE, 1, y)
    return x, w, b, y, kw


@pytest.mark.parametrize("chunk_rows", [5, None])
@pytest.mark.parametrize("name", list(EXTRAS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_z_loss_softcap_match_the_oracle(xp, reduction, name, chunk_rows):
    x, w, b, y, kw = setup(name)
    expected = oracle(x, w, b, y, reduction=reduction, **kw)
    bx, bw, bb, by, bweight = to_backend(xp, x, w, b, y, kw.get("weight"))
    kw_b = {**kw, "weight": bweight} if "weight" in kw else kw
    got = xs.linear_softmax_loss(bx, bw, bb, by, reduction=reduction, chunk_rows=chunk_rows, **kw_b)
    assert all(backend_name(array_namespace(g)) == backend_name(xp) for g in got)
    check(got, expected, rtol=1e-9, atol=1e-11)


def test_linear_z_loss_mean_divides_by_counted_rows_not_weights():
    x, w, b, y, kw = setup("z+cap+all")
    loss, *_ = xs.linear_softmax_loss(x, w, b, y, chunk_rows=4, **kw)
    without, *_ = xs.linear_softmax_loss(x, w, b, y, chunk_rows=4, **{**kw, "z_loss": 0.0})
    lse = np.log(np.exp(3.0 * np.tanh((x @ w + b) / 3.0)).sum(axis=1))
    kept = y != IGNORE
    np.testing.assert_allclose(loss - without, kw["z_loss"] * (lse[kept] ** 2).mean(), rtol=1e-10)


def test_linear_bad_z_loss_and_softcap_name_the_option():
    x, w, b, y, _ = setup("z")
    with pytest.raises(ValueError, match="z_loss"):
        xs.linear_softmax_loss(x, w, b, y, z_loss=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        xs.linear_softmax_loss(x, w, b, y, softcap=0.0)
    with pytest.raises(TypeError, match="y must have an integer dtype"):
        xs.linear_softmax_loss(x, w, b, y.astype(np.float64))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", list(EXTRAS))
def test_jax_linear_z_loss_softcap_under_jit(reduction, name):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    from xsoftmax._jax_linear import linear_cross_entropy

    x, w, b, y, kw = setup(name)
    loss, dx, dw, db = oracle(x, w, b, y, reduction=reduction, **kw)
    kw_j = {**kw, "weight": jnp.asarray(kw["weight"])} if "weight" in kw else kw

    def total(xj, wj, bj):
        out = linear_cross_entropy(xj, wj, jnp.asarray(y), bj, reduction=reduction, chunk_rows=6, **kw_j)
        return out.sum(), out

    (_, got), grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True))(
        jnp.asarray(x), jnp.asarray(w.T), jnp.asarray(b)
    )
    np.testing.assert_allclose(np.asarray(got), loss, rtol=1e-9, atol=1e-11)
    for g, e in zip(grads, (dx, dw.T, db), strict=True):
        np.testing.assert_allclose(np.asarray(g), e, rtol=1e-9, atol=1e-11)
