"""xsoftmax.jax against JAX autodiff of a jax.numpy formula (and torch's values) under jit/grad/vmap."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from xsoftmax.jax import cross_entropy  # noqa: E402  (after the importorskip)

DTYPES = ["float16", "bfloat16", "float32", "float64"]
TOL = {"float64": (1e-10, 1e-12), "float32": (2e-5, 2e-6), "float16": (1e-2, 2e-3), "bfloat16": (4e-2, 2e-2)}
C = 6
OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore_index=-100": {"ignore_index": -100},
    "ignore_index=2": {"ignore_index": 2},
    "smoothing": {"label_smoothing": 0.2},
    "all": {"weight": True, "ignore_index": -100, "label_smoothing": 0.1},
}


def autodiff_formula(s, y, *, weight=None, ignore_index=None, label_smoothing=0.0, reduction="mean"):
    """torch's cross-entropy written plainly in jax.numpy (differentiated by JAX itself)."""
    c = s.shape[1]
    logp = jax.nn.log_softmax(s, axis=1)
    w = jnp.ones(c, s.dtype) if weight is None else weight.astype(s.dtype)
    valid = jnp.ones(y.shape, bool) if ignore_index is None else y != ignore_index
    ys = jnp.where(valid, y, 0)
    wy = jnp.where(valid, w[ys], 0)
    nll = -jnp.take_along_axis(logp, ys[:, None], axis=1)[:, 0] * wy
    smooth = jnp.where(valid, -(logp * w).sum(1), 0)
    if reduction == "none":
        return (1 - label_smoothing) * nll + label_smoothing / c * smooth
    nll, smooth = nll.sum(), smooth.sum()
    if reduction == "mean":
        nll = nll / wy.sum()
        smooth = smooth / (wy.sum() if weight is not None else valid.sum())
    return (1 - label_smoothing) * nll + label_smoothing / c * smooth


def make(dtype, option, n=10, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, C)) * 3
    y = rng.integers(0, C, n)
    kwargs = {k: v for k, v in option.items() if k != "weight"}
    if "ignore_index" in option:
        y[::3] = option["ignore_index"]
    if option.get("weight"):
        kwargs["weight"] = jnp.asarray(rng.random(C) + 0.5, dtype=dtype)
    return jnp.asarray(s, dtype=dtype), jnp.asarray(y), kwargs


def close(a, b, dtype):
    rtol, atol = TOL[dtype]
    b = np.asarray(b, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), b, rtol=rtol,
                               atol=atol * max(1.0, float(np.abs(b).max())))


def f64(x):
    return None if x is None else jnp.asarray(x, dtype=jnp.float64)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("option", list(OPTIONS), ids=list(OPTIONS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_matches_autodiff_with_non_unit_cotangent(dtype, option, reduction, jit):
    s, y, kwargs = make(dtype, OPTIONS[option])

    def ours(s):
        return cross_entropy(s, y, reduction=reduction, **kwargs)

    loss, vjp = jax.vjp(jax.jit(ours) if jit else ours, s)
    cot = jnp.asarray(np.random.default_rng(1).random(loss.shape) + 0.5, dtype=loss.dtype)
    (grad,) = vjp(cot)
    assert loss.dtype == grad.dtype == s.dtype
    ref_kwargs = {**kwargs, "weight": f64(kwargs.get("weight"))}
    ref_loss, ref_vjp = jax.vjp(lambda t: autodiff_formula(t, y, reduction=reduction, **ref_kwargs), f64(s))
    (ref_grad,) = ref_vjp(f64(cot))
    close(loss, ref_loss, dtype)
    close(grad, ref_grad, dtype)


@pytest.mark.parametrize("option", list(OPTIONS), ids=list(OPTIONS))
def test_formula_and_adapter_match_torch(option):
    torch = pytest.importorskip("torch")
    s, y, kwargs = make("float64", OPTIONS[option])
    tk = dict(kwargs)
    if "weight" in tk:
        tk["weight"] = torch.from_numpy(np.asarray(tk["weight"]))
    leaf = torch.from_numpy(np.array(s)).requires_grad_()
    expected = torch.nn.functional.cross_entropy(leaf, torch.from_numpy(np.asarray(y)), **tk)
    expected.backward()
    loss, grad = jax.value_and_grad(cross_entropy)(s, y, **kwargs)
    np.testing.assert_allclose(float(loss), float(expected.detach()), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(grad), leaf.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(float(autodiff_formula(s, y, **kwargs)), float(expected.detach()), rtol=1e-12)


def test_value_and_grad_jit_and_vmap():
    s, y, _ = make("float32", {})
    batch_s = jnp.stack([s, 2 * s, -s])
    batch_y = jnp.stack([y, y, (y + 1) % C])
    ours = jax.vmap(jax.value_and_grad(cross_entropy))(batch_s, batch_y)
    ref = jax.vmap(jax.value_and_grad(autodiff_formula))(batch_s, batch_y)
    jitted = jax.jit(jax.vmap(jax.value_and_grad(cross_entropy)))(batch_s, batch_y)
    for got in (ours, jitted):
        close(got[0], ref[0], "float32")
        close(got[1], ref[1], "float32")
    # vmap over the rows of an (N, C) batch: each call sees one (1, C) row.
    rows = jax.vmap(lambda r, t: cross_entropy(r[None], t[None]))(s, y)
    close(rows, autodiff_formula(s, y, reduction="none"), "float32")


def test_weight_and_labels_get_zero_cotangents():
    s, y, kwargs = make("float32", {"weight": True})
    gw = jax.grad(lambda w: cross_entropy(s, y, weight=w))(kwargs["weight"])
    assert not np.any(np.asarray(gw))


def test_bad_labels_raise_eagerly_and_are_nan_under_jit():
    s, y, _ = make("float32", {})
    bad = y.at[4].set(C)
    with pytest.raises(ValueError, match=r"y\[4\] = 6 is out of range"):
        cross_entropy(s, bad)
    rows = jax.jit(lambda s, y: cross_entropy(s, y, reduction="none"))(s, bad)
    assert np.isnan(np.asarray(rows)[4]) and not np.isnan(np.asarray(rows)[:4]).any()
    one_row = r"y must have shape \(\) \(scores \(6,\) without the class axis 1\)"  # (C,): one row
    with pytest.raises(ValueError, match=one_row):
        cross_entropy(s[0], y)
    with pytest.raises(ValueError, match="y must have one label per row"):
        cross_entropy(s, y[:-1])
    with pytest.raises(ValueError, match="floating y holds class probabilities"):
        cross_entropy(s, s[:, 0])
    with pytest.raises(ValueError, match="reduction must be one of"):
        cross_entropy(s, y, reduction="avg")
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        cross_entropy(s, y, ignore_index=1.5)


def test_inputs_are_not_modified():
    s, y, kwargs = make("float32", OPTIONS["all"])
    before = (np.array(s), np.array(y), np.array(kwargs["weight"]))
    jax.grad(cross_entropy)(s, y, **kwargs)
    np.testing.assert_array_equal(np.asarray(s), before[0])
    np.testing.assert_array_equal(np.asarray(y), before[1])
    np.testing.assert_array_equal(np.asarray(kwargs["weight"]), before[2])
