"""xsoftmax.torch against torch.nn.functional.cross_entropy with autograd: values, gradients, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import xsoftmax as xs  # noqa: E402  (after the importorskip)
from xsoftmax.torch import CrossEntropyLoss, cross_entropy  # noqa: E402

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
#: (rtol, atol) against torch in float64, by dtype (half types store the result rounded).
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.float16: (1e-2, 2e-3),
    torch.bfloat16: (4e-2, 2e-2),
}
C = 7

OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "default-ignore(-100 labels)": {"ignored_labels": -100},
    "ignore_index=2": {"ignore_index": 2, "ignored_labels": 2},
    "smoothing": {"label_smoothing": 0.2},
    "weight+ignore+smoothing": {"weight": True, "ignored_labels": -100, "label_smoothing": 0.1},
    "weight+ignore_index=-1+smoothing": {
        "weight": True, "ignore_index": -1, "ignored_labels": -1, "label_smoothing": 0.3,
    },
}


def make(n=12, c=C, dtype=torch.float32, seed=0, option=None):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g, dtype=torch.float64) * 3).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    option = option or {}
    if "ignored_labels" in option:
        y[::4] = option["ignored_labels"]
    kwargs = {k: v for k, v in option.items() if k in ("ignore_index", "label_smoothing")}
    if option.get("weight"):
        kwargs["weight"] = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    return x, y, kwargs


def torch_f64(x, y, kwargs, reduction, upstream):
    """F.cross_entropy's loss and gradient, in float64, for upstream gradient ``upstream``."""
    k = dict(kwargs)
    if "weight" in k:
        k["weight"] = k["weight"].double()
    leaf = x.detach().double().requires_grad_()
    loss = F.cross_entropy(leaf, y, reduction=reduction, **k)
    loss.backward(upstream.double())
    return loss.detach(), leaf.grad


def close(actual, expected, dtype):
    rtol, atol = TOL[dtype]
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    np.testing.assert_allclose(actual.double().numpy(), expected.numpy(), rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("option", list(OPTIONS), ids=list(OPTIONS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_torch_with_non_unit_upstream(dtype, option, reduction):
    x, y, kwargs = make(dtype=dtype, option=OPTIONS[option])
    before = (x.clone(), y.clone(), {k: v.clone() for k, v in kwargs.items() if torch.is_tensor(v)})
    leaf = x.clone().requires_grad_()
    loss = cross_entropy(leaf, y, reduction=reduction, **kwargs)
    assert loss.dtype == dtype and loss.shape == ((12,) if reduction == "none" else ())
    upstream = (torch.rand(loss.shape, dtype=torch.float64) + 0.5).to(dtype)
    loss.backward(upstream)
    ref_loss, ref_grad = torch_f64(x, y, kwargs, reduction, upstream)
    close(loss.detach(), ref_loss, dtype)
    assert leaf.grad.dtype == dtype
    close(leaf.grad, ref_grad, dtype)
    # Inputs are never modified.
    assert torch.equal(x, before[0]) and torch.equal(y, before[1])
    for k, v in before[2].items():
        assert torch.equal(kwargs[k], v)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_float32_unit_upstream_matches_torch_exactly_enough(reduction):
    x, y, kwargs = make(n=64, c=33, option=OPTIONS["weight+ignore+smoothing"])
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    la = cross_entropy(a, y, reduction=reduction, **kwargs)
    lb = F.cross_entropy(b, y, reduction=reduction, **kwargs)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("option", list(OPTIONS), ids=list(OPTIONS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(option, reduction):
    x, y, kwargs = make(n=5, c=4, dtype=torch.float64, option=OPTIONS[option])
    y = y.clamp(max=3) if "ignore_index" not in kwargs else y.masked_fill((y >= 4) & (y != -1), 3)
    leaf = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda s: cross_entropy(s, y, reduction=reduction, **kwargs), (leaf,))


def test_double_backward_raises():
    x, y, _ = make(dtype=torch.float64)
    leaf = x.requires_grad_()
    with pytest.raises(RuntimeError, match="once differentiable.*create_graph=True"):
        torch.autograd.grad(cross_entropy(leaf, y), leaf, create_graph=True)
    upstream = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="once differentiable"):
        torch.autograd.grad(cross_entropy(leaf, y), leaf, grad_outputs=upstream, create_graph=True)


def test_repeated_backward_with_retain_graph():
    x, y, kwargs = make(option=OPTIONS["weight"])
    leaf = x.clone().requires_grad_()
    loss = cross_entropy(leaf, y, **kwargs)
    loss.backward(retain_graph=True)
    first = leaf.grad.clone()
    loss.backward(retain_graph=True)  # accumulates: 2x, the kept gradient intact
    torch.testing.assert_close(leaf.grad, 2 * first)
    loss.backward(torch.tensor(3.0))
    torch.testing.assert_close(leaf.grad, 5 * first)
    _, ref = torch_f64(x, y, kwargs, "mean", torch.tensor(1.0))
    torch.testing.assert_close(first.double(), ref, rtol=2e-5, atol=2e-6)


def test_kept_gradient_is_released_by_backward():
    x, y, _ = make()
    leaf = x.clone().requires_grad_()
    loss = cross_entropy(leaf, y)
    (kept,) = loss.grad_fn.saved_tensors
    assert kept.shape == x.shape
    del kept
    loss.backward()
    with pytest.raises(RuntimeError, match="freed"):
        _ = loss.grad_fn.saved_tensors  # the graph no longer holds the N x C gradient


def test_gradient_flows_through_earlier_ops_and_loss_reuse():
    x, y, _ = make()
    w = torch.randn(C, C, dtype=torch.float32, requires_grad=True)
    w2 = w.detach().clone().requires_grad_()
    (cross_entropy(x @ w, y) * 2 + cross_entropy(x @ w, y, reduction="sum") / 10).backward()
    (F.cross_entropy(x @ w2, y) * 2 + F.cross_entropy(x @ w2, y, reduction="sum") / 10).backward()
    torch.testing.assert_close(w.grad, w2.grad)


def test_no_grad_and_plain_tensor():
    x, y, _ = make()
    with torch.no_grad():
        loss = cross_entropy(x.requires_grad_(), y)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, F.cross_entropy(x.detach(), y))


def test_empty_batch_is_nan_for_mean_like_torch():
    x, y = torch.zeros(0, C, requires_grad=True), torch.zeros(0, dtype=torch.long)
    assert torch.isnan(cross_entropy(x, y)) and torch.isnan(F.cross_entropy(x, y))
    assert float(cross_entropy(x, y, reduction="sum").detach()) == 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inplace_backward_overwrites_logits_with_the_gradient(dtype):
    x, y, kwargs = make(dtype=dtype, option=OPTIONS["weight+ignore+smoothing"])
    leaf = x.clone().requires_grad_()
    storage = leaf.detach()
    loss = cross_entropy(leaf, y, inplace_backward=True, **kwargs)
    ref_loss, ref_grad = torch_f64(x, y, kwargs, "mean", torch.tensor(1.0))
    close(loss.detach(), ref_loss, dtype)
    close(storage, ref_grad, dtype)  # the logits' storage now holds the gradient
    loss.backward()
    close(leaf.grad, ref_grad, dtype)


def test_inplace_backward_is_caught_when_the_logits_were_saved():
    x, y, _ = make()
    leaf = x.clone().requires_grad_()
    z = leaf.exp()  # exp saves its output for backward
    loss = cross_entropy(z, y, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_module_is_a_drop_in():
    x, y, kwargs = make(option=OPTIONS["weight+ignore_index=-1+smoothing"])
    ours = CrossEntropyLoss(**kwargs, reduction="sum")
    theirs = torch.nn.CrossEntropyLoss(**kwargs, reduction="sum")
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"weight"}
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(a, y).backward()
    theirs(b, y).backward()
    torch.testing.assert_close(a.grad, b.grad)
    with pytest.warns(UserWarning, match="size_average"):
        legacy = CrossEntropyLoss(size_average=False)
    assert legacy.reduction == "sum"


def test_softmax_loss_on_tensors_routes_and_keeps_the_callers_type():
    x, y, kwargs = make(option=OPTIONS["weight+ignore_index=-1+smoothing"])
    loss, d = xs.softmax_loss(x, y, **kwargs)
    nl, nd = xs.softmax_loss(x.numpy(), y.numpy(), **{k: v.numpy() if torch.is_tensor(v) else v
                                                      for k, v in kwargs.items()})
    assert isinstance(loss, torch.Tensor) and isinstance(d, torch.Tensor) and d.dtype == x.dtype
    np.testing.assert_array_equal(d.numpy(), nd)
    np.testing.assert_array_equal(loss.numpy(), nl)
    ref_loss, ref_d = xs.softmax_loss(x, y, engine="reference", **kwargs)
    torch.testing.assert_close(d, ref_d)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softmax_loss_with_requires_grad_is_differentiable(dtype):
    x, y, _ = make(dtype=dtype)
    leaf = x.clone().requires_grad_()
    loss, d = xs.softmax_loss(leaf, y, reduction="sum")
    assert loss.requires_grad and not d.requires_grad
    loss.backward()
    torch.testing.assert_close(leaf.grad, d)
    _, ref = torch_f64(x, y, {}, "sum", torch.tensor(1.0))
    close(d, ref, dtype)


def test_softmax_loss_out_tensor_and_bfloat16():
    x, y, _ = make()
    out = torch.empty_like(x)
    _, d = xs.softmax_loss(x, y, out=out)
    assert d is out
    xb = x.to(torch.bfloat16)
    loss, d = xs.softmax_loss(xb, y)
    assert d.dtype == loss.dtype == torch.bfloat16
    out = torch.empty_like(xb)
    _, d = xs.softmax_loss(xb, y, out=out)
    assert d is out and float((out.float() - d.float()).abs().max()) == 0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("label", "ignore_index"),
    [(C, -100), (-1, -100), (-100, 3), (C + 1, 3), (-5, -1)],
)
def test_out_of_range_label_names_target(label, ignore_index):
    x, y, _ = make()
    y[5] = label
    with pytest.raises(ValueError, match=rf"target\[5\] = {label} is out of range"):
        cross_entropy(x, y, ignore_index=ignore_index)


def test_bad_shapes_and_dtypes_name_the_argument():
    x, y, _ = make()
    with pytest.raises(ValueError, match=r"input must have shape \(N, C\) or \(N, C, d1"):
        cross_entropy(x[0], y)
    with pytest.raises(ValueError, match="target must have shape"):
        cross_entropy(x, y[:-1])
    with pytest.raises(ValueError, match="weight must have shape"):
        cross_entropy(x, y, weight=torch.ones(C + 1))
    with pytest.raises(TypeError, match=r"holds class probabilities and must have a floating dtype"):
        cross_entropy(x, y[:, None].repeat(1, C))
    with pytest.raises(ValueError, match=r"must have input's shape \(12, 7\), got shape \(12, 6\)"):
        cross_entropy(x, torch.softmax(x, 1)[:, :6])
    with pytest.raises(TypeError, match="input must have a floating dtype"):
        cross_entropy(y[:, None].repeat(1, C), y)
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        cross_entropy(x.numpy(), y)
    with pytest.raises(ValueError, match="reduction must be one of"):
        cross_entropy(x, y, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        cross_entropy(x, y, label_smoothing=1.5)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        cross_entropy(x, y, ignore_index=1.0)


def test_two_devices_name_the_argument():
    x, y, _ = make()
    with pytest.raises(ValueError, match="target is on meta"):
        cross_entropy(x, y.to("meta"))


def test_engine_threads_follow_torch_set_num_threads(monkeypatch):
    import xsoftmax.torch as xt

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert xt.numpy_threads() == 1
        monkeypatch.setattr(xt, "NUMPY_THREADS", 3)
        assert xt.numpy_threads() == 3
        monkeypatch.setattr(xt, "NUMPY_THREADS", None)
        monkeypatch.setenv("XSOFTMAX_NUM_THREADS", "1")
        torch.set_num_threads(2)
        assert xt.numpy_threads() is None  # the engine's own default (and short-row rule)
    finally:
        torch.set_num_threads(before)


def test_import_xsoftmax_imports_neither_torch_nor_jax():
    code = (
        "import sys, numpy as np, xsoftmax as xs; xs.softmax_loss(np.ones((2, 3)), np.array([0, 1]));"
        "bad = [m for m in ('torch', 'jax', 'cupy', 'dask') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
