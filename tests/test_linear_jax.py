"""The JAX adapter of the fused linear loss: jit, grad, value_and_grad against torch and the oracle."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy
jax.config.update("jax_enable_x64", True)

from test_linear import IGNORE, oracle, problem  # noqa: E402

from xsoftmax._jax_linear import linear_cross_entropy  # noqa: E402

OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore_index": IGNORE},
    "smooth": {"label_smoothing": 0.2},
    "all": {"weight": True, "ignore_index": IGNORE, "label_smoothing": 0.1},
}


def setup(opt, seed=0):
    x, w, b, y, weight = problem(seed=seed)
    if "ignore_index" not in OPTIONS[opt]:
        y = np.where(y == IGNORE, 1, y)
    kw = dict(OPTIONS[opt])
    if kw.pop("weight", False):
        kw["weight"] = weight
    return x, w, b, y, kw


@pytest.mark.parametrize(("chunk_rows", "jit"), [(1, False), (7, True), (None, True)])
@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_and_grad_match_the_oracle(reduction, opt, chunk_rows, jit):
    x, w, b, y, kw = setup(opt)
    loss, dx, dw, db = oracle(x, w, b, y, reduction=reduction, **kw)
    rng = np.random.default_rng(1)
    go = rng.standard_normal(np.shape(loss))  # upstream gradient of each row ("none")
    jkw = {k: jnp.asarray(v) if k == "weight" else v for k, v in kw.items()}

    def f(xx, ww, bb):
        yy = jnp.asarray(y)
        out = linear_cross_entropy(xx, ww, yy, bb, reduction=reduction, chunk_rows=chunk_rows, **jkw)
        return jnp.sum(out * go), out

    fn = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)
    if jit:
        fn = jax.jit(fn)
    (_, out), (gx, gw, gb) = fn(jnp.asarray(x), jnp.asarray(w.T), jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(out), loss, rtol=1e-10, atol=1e-12)
    # The oracle's gradients are of Σ loss_i; with upstream γ the rows scale by γ_i.
    s = x @ w + b
    from _helpers import ref_softmax_loss

    _, g = ref_softmax_loss(s, y, reduction=reduction, **kw)
    g = g * (go[:, None] if reduction == "none" else go)
    np.testing.assert_allclose(np.asarray(gx), g @ w.T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gw), (x.T @ g).T, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gb), g.sum(axis=0), rtol=1e-10, atol=1e-12)
    del dx, dw, db


def test_batched_input_and_no_bias_against_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, _, y, kw = setup("all", seed=2)
    x3, y3 = x[:22].reshape(2, 11, -1), y[:22].reshape(2, 11)
    wt = w.T.copy()
    tx = torch.tensor(x3, requires_grad=True)
    tw = torch.tensor(wt, requires_grad=True)
    ref = F.cross_entropy(
        F.linear(tx, tw).reshape(-1, wt.shape[0]), torch.tensor(y3.reshape(-1)),
        weight=torch.tensor(kw["weight"]), ignore_index=IGNORE, label_smoothing=0.1,
    )  # fmt: skip
    ref.backward()

    def f(xx, ww):
        return linear_cross_entropy(
            xx, ww, jnp.asarray(y3), weight=jnp.asarray(kw["weight"]), ignore_index=IGNORE,
            label_smoothing=0.1, chunk_rows=5,
        )  # fmt: skip

    value, (gx, gw) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(jnp.asarray(x3), jnp.asarray(wt))
    np.testing.assert_allclose(float(value), ref.item(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(gx), tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gw), tw.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_bad_label_under_jit_poisons_only_its_row():
    x, w, b, y, _ = setup("plain", seed=3)
    y = y.copy()
    y[4] = 99
    out = jax.jit(lambda xx: linear_cross_entropy(xx, jnp.asarray(w.T), jnp.asarray(y), reduction="none"))(
        jnp.asarray(x)
    )
    out = np.asarray(out)
    assert np.isnan(out[4]) and np.all(np.isfinite(np.delete(out, 4)))
    with pytest.raises(ValueError, match=r"y\[4\] = 99"):
        linear_cross_entropy(jnp.asarray(x), jnp.asarray(w.T), jnp.asarray(y))


def test_shapes_that_do_not_chain():
    x, w, b, y, _ = setup("plain")
    with pytest.raises(ValueError, match=r"w \(C, D\) do not chain.*\(23, 4\).*\(7, 3\)"):
        linear_cross_entropy(jnp.asarray(x), jnp.asarray(w.T[:, :3]), jnp.asarray(y))
    with pytest.raises(ValueError, match=r"labels must have x's shape"):
        linear_cross_entropy(jnp.asarray(x), jnp.asarray(w.T), jnp.asarray(y[:5]))
