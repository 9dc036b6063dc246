"""xsoftmax.jax.cross_entropy with probability targets, K-dim logits, z_loss and softcap.

Compared with JAX autodiff of the formula written in ``jax.numpy`` (softcap,
log-softmax, the weighted/smoothed target, the z-loss term), under ``jit``,
``grad`` and ``vmap``, and with the float64 oracle.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy
jax.config.update("jax_enable_x64", True)

from _oracle import oracle_softmax_loss  # noqa: E402

from xsoftmax.jax import cross_entropy  # noqa: E402

REDUCTIONS = ("mean", "sum", "none")
IGNORE = -100
TOL = {"float64": (1e-10, 1e-12), "float32": (2e-5, 2e-6)}


def formula(s, y, *, reduction="mean", weight=None, ignore_index=None, label_smoothing=0.0, z_loss=0.0,
            softcap=None):  # fmt: skip
    """The loss in plain ``jax.numpy`` (class axis 1), for JAX's own autodiff."""
    c = s.shape[1]
    z = s if softcap is None else softcap * jnp.tanh(s / softcap)
    logp = jax.nn.log_softmax(z, axis=1)
    lse = jax.nn.logsumexp(z, axis=1)
    w = jnp.ones(c, s.dtype) if weight is None else weight
    wb = w.reshape((1, c) + (1,) * (s.ndim - 2))
    if jnp.issubdtype(y.dtype, jnp.floating):
        q = (1 - label_smoothing) * y + label_smoothing / c
        ce = -(wb * q * logp).sum(axis=1)
        valid = jnp.ones(ce.shape, bool)
        denom = ce.size
    else:
        valid = jnp.ones(y.shape, bool) if ignore_index is None else y != ignore_index
        safe = jnp.where(valid, y, 0)
        nll = -jnp.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
        wy = jnp.where(valid, w[safe], 0.0)
        smooth = jnp.where(valid, label_smoothing / c * (wb * logp).sum(1), 0.0)
        ce = (1 - label_smoothing) * wy * nll - smooth
        denom = wy.sum()
    zl = jnp.where(valid, z_loss * lse**2, 0.0)
    if reduction == "none":
        return ce + zl
    if reduction == "sum":
        return ce.sum() + zl.sum()
    return ce.sum() / denom + (zl.sum() / valid.sum() if z_loss else 0.0)


def make(shape, dtype, *, probabilities, seed=0, ignore=False):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(shape) * 3
    c = shape[1]
    if probabilities:
        y = rng.random(shape).astype(dtype)
    else:
        y = rng.integers(0, c, (shape[0], *shape[2:]))
        if ignore:
            y.reshape(-1)[::3] = IGNORE
    return s.astype(dtype), y, (rng.random(c) + 0.5).astype(dtype)


COMBOS = [  # (weight, label_smoothing, z_loss, softcap)
    (False, 0.0, 0.0, None),
    (True, 0.2, 0.0, None),
    (False, 0.0, 1e-2, None),
    (False, 0.0, 0.0, 2.5),
    (True, 0.1, 5e-2, 3.0),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("probabilities", [False, True], ids=["labels", "probabilities"])
@pytest.mark.parametrize("shape", [(9, 5), (3, 4, 6), (2, 5, 3, 2)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: f"w{int(c[0])}-eps{c[1]}-z{c[2]}-cap{c[3]}")
def test_jit_value_and_grad_match_autodiff_of_the_formula(dtype, probabilities, shape, reduction, combo):
    weighted, eps, zeta, cap = combo
    s, y, w = make(shape, dtype, probabilities=probabilities, ignore=not probabilities)
    kw = dict(reduction=reduction, label_smoothing=eps, z_loss=zeta, softcap=cap)
    if not probabilities:
        kw["ignore_index"] = IGNORE
    weight = jnp.asarray(w) if weighted else None
    up = jnp.asarray(np.random.default_rng(1).random((shape[0], *shape[2:])) + 0.5)

    def ours(t):
        out = cross_entropy(t, jnp.asarray(y), weight=weight, **kw)
        return (out * up.astype(out.dtype)).sum() if reduction == "none" else out * 0.75

    def ref(t):
        out = formula(t, jnp.asarray(y, jnp.float64) if probabilities else jnp.asarray(y),
                      weight=None if weight is None else weight.astype(jnp.float64), **kw)  # fmt: skip
        return (out * up).sum() if reduction == "none" else out * 0.75

    got, g = jax.jit(jax.value_and_grad(ours))(jnp.asarray(s))
    want, gw = jax.value_and_grad(ref)(jnp.asarray(s, jnp.float64))
    rtol, atol = TOL[dtype]
    assert g.dtype == s.dtype and g.shape == s.shape
    np.testing.assert_allclose(float(got), float(want), rtol=rtol, atol=atol * max(1, abs(float(want))))
    np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(gw), rtol=rtol, atol=atol)
    # And the float64 oracle, loss by loss ("none" keeps the positions' shape).
    loss, _ = oracle_softmax_loss(s.astype(np.float64), y, weight=w if weighted else None, **kw)
    eager = np.asarray(cross_entropy(jnp.asarray(s), jnp.asarray(y), weight=weight, **kw), np.float64)
    np.testing.assert_allclose(eager, loss, rtol=rtol, atol=atol * max(1, np.abs(loss).max()))


def test_vmap_over_batches_with_z_loss_and_softcap():
    rng = np.random.default_rng(2)
    s, y = rng.standard_normal((4, 6, 5)) * 3, rng.integers(0, 5, (4, 6))  # 4 batches of (6, 5) logits
    f = jax.vmap(jax.grad(lambda t, yy: cross_entropy(t, yy, z_loss=1e-2, softcap=3.0)))
    got = f(jnp.asarray(s), jnp.asarray(y))
    for i in range(4):
        _, want = oracle_softmax_loss(s[i], y[i], z_loss=1e-2, softcap=3.0)
        np.testing.assert_allclose(np.asarray(got[i]), want, rtol=1e-10, atol=1e-12)


def test_probabilities_refuse_ignore_index_and_bad_options_name_themselves():
    s, q, _ = make((3, 4), "float64", probabilities=True)
    with pytest.raises(ValueError, match="ignore_index=0 is not supported with probability targets"):
        cross_entropy(jnp.asarray(s), jnp.asarray(q), ignore_index=0)
    with pytest.raises(ValueError, match=r"must have the scores' shape \(3, 4\), got shape \(3, 3\)"):
        cross_entropy(jnp.asarray(s), jnp.asarray(q[:, :3]))
    with pytest.raises(ValueError, match="z_loss"):
        cross_entropy(jnp.asarray(s), jnp.asarray(q), z_loss=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        cross_entropy(jnp.asarray(s), jnp.asarray(q), softcap=0.0)
    with pytest.raises(TypeError, match="z_loss must be a Python float"):
        cross_entropy(jnp.asarray(s), jnp.asarray(q), z_loss=jnp.asarray(0.1))
