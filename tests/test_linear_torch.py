"""The torch adapter of the fused linear loss against autograd of F.cross_entropy(F.linear(...))."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from xsoftmax._torch_linear import LinearCrossEntropyLoss, linear_cross_entropy  # noqa: E402

B, T, D, C = 3, 5, 4, 9

OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore_index": 2},
    "smooth": {"label_smoothing": 0.2},
    "all": {"weight": True, "label_smoothing": 0.1},  # with the default ignore_index=-100 rows
}


def make(dtype=torch.float64, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, dtype=dtype, generator=g, requires_grad=True)
    w = torch.randn(C, D, dtype=dtype, generator=g, requires_grad=True)
    b = torch.randn(C, dtype=dtype, generator=g, requires_grad=True) if bias else None
    y = torch.randint(0, C, (B, T), generator=g)
    y[0, 1] = -100
    y[2, 3] = -100
    weight = torch.rand(C, dtype=dtype, generator=g) + 0.1
    return x, w, b, y, weight


def grads(loss, inputs, go):
    return torch.autograd.grad(loss, [t for t in inputs if t is not None], go)


@pytest.mark.parametrize("chunk_rows", [1, 7, None])
@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_autograd(reduction, opt, chunk_rows, bias):
    x, w, b, y, weight = make(bias=bias)
    kw = dict(OPTIONS[opt])
    if kw.pop("weight", False):
        kw["weight"] = weight
    if "ignore_index" in kw:  # the ignored rows carry this option's label, not -100
        y = torch.where(y == -100, kw["ignore_index"], y)
    ref = F.cross_entropy(F.linear(x, w, b).reshape(-1, C), y.reshape(-1), reduction=reduction, **kw)
    ref = ref.reshape(B, T) if reduction == "none" else ref
    got = linear_cross_entropy(x, w, y, b, reduction=reduction, chunk_rows=chunk_rows, **kw)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    go = torch.randn(ref.shape, dtype=ref.dtype)  # a non-trivial upstream gradient
    for g, r in zip(grads(got, (x, w, b), go), grads(ref, (x, w, b), go), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_module_takes_the_functions_order():
    x, w, b, y, weight = make()
    module = LinearCrossEntropyLoss(weight=weight, label_smoothing=0.1, chunk_rows=4)
    ref = F.cross_entropy(F.linear(x, w, b).reshape(-1, C), y.reshape(-1), weight=weight, label_smoothing=0.1)
    torch.testing.assert_close(module(x, w, y, b), ref)
    module(x, w, y, b).backward()
    assert x.grad is not None and w.grad is not None and b.grad is not None


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_tiny(reduction):
    x, w, b, y, weight = make()
    x2 = x.detach()[0].requires_grad_()
    fn = lambda a, ww, bb: linear_cross_entropy(  # noqa: E731
        a, ww, y[0], bb, weight=weight, label_smoothing=0.1, reduction=reduction, chunk_rows=2
    )
    assert torch.autograd.gradcheck(fn, (x2, w, b))


def test_double_backward_raises_a_clear_error():
    x, w, b, y, _ = make()
    for reduction in ("mean", "none"):
        loss = linear_cross_entropy(x, w, y, b, reduction=reduction).sum()
        with pytest.raises(RuntimeError, match="differentiable once"):
            torch.autograd.grad(loss, x, create_graph=True)


def test_float32_and_bfloat16_dtypes():
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        x, w, b, y, _ = make(dtype=dtype)
        got = linear_cross_entropy(x, w, y, b, chunk_rows=4)
        assert got.dtype == dtype
        ref = F.cross_entropy(F.linear(x.double(), w.double(), b.double()).reshape(-1, C), y.reshape(-1))
        torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)
        gx, gw = torch.autograd.grad(got, (x, w))
        rx, rw = torch.autograd.grad(ref, (x, w))
        assert gx.dtype == dtype and gw.dtype == dtype
        torch.testing.assert_close(gx.double(), rx.double(), rtol=tol, atol=tol)


def test_inputs_are_not_mutated():
    x, w, b, y, weight = make()
    before = [t.detach().clone() for t in (x, w, b, y, weight)]
    for reduction in ("mean", "none"):
        loss = linear_cross_entropy(x, w, y, b, weight=weight, reduction=reduction, chunk_rows=3)
        loss.sum().backward()
    for t, old in zip((x, w, b, y, weight), before, strict=True):
        assert torch.equal(t.detach(), old)


def test_bad_shapes():
    x, w, b, y, _ = make()
    with pytest.raises(ValueError, match=r"target must have input's shape.*\(3, 5, 4\).*\(3, 4\)"):
        linear_cross_entropy(x, w, y[:, :4], b)
    with pytest.raises(ValueError, match=r"linear_weight \(C, D\) do not chain.*\(3, 5, 4\).*\(9, 3\)"):
        linear_cross_entropy(x, w[:, :3], y, b)
    with pytest.raises(ValueError, match=r"b must have shape \(C,\) = \(9,\)"):
        linear_cross_entropy(x, w, y, b[:5])
