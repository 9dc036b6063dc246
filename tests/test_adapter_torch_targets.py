"""xsoftmax.torch with issue 15's options against torch autograd.

Probability targets and K-dimensional batches against ``F.cross_entropy``;
z-loss and softcap against autograd of their formula written in torch
(``ζ · logsumexp(z)²`` per counted position, ``z = c · tanh(s / c)``).
Also the linear adapter with ``z_loss`` / ``softcap``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from xsoftmax.torch import (  # noqa: E402  (after the importorskip)
    CrossEntropyLoss,
    LinearCrossEntropyLoss,
    cross_entropy,
    linear_cross_entropy,
)

TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 2e-6)}
REDUCTIONS = ("mean", "sum", "none")


def torch_formula(s, y, *, reduction="mean", weight=None, ignore_index=-100, label_smoothing=0.0,
                  z_loss=0.0, softcap=None):  # fmt: skip
    """The loss by torch ops alone: F.cross_entropy of the capped logits plus the z-loss term."""
    z = s if softcap is None else softcap * torch.tanh(s / softcap)
    loss = F.cross_entropy(
        z, y, weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
    )
    if not z_loss:
        return loss
    lse = torch.logsumexp(z, dim=1)
    valid = torch.ones_like(lse, dtype=torch.bool) if y.is_floating_point() else y != ignore_index
    zl = torch.where(valid, z_loss * lse * lse, torch.zeros_like(lse))
    if reduction == "none":
        return loss + zl
    if reduction == "sum":
        return loss + zl.sum()
    return loss + zl.sum() / valid.sum()


def make(shape, dtype, *, probabilities, seed=0, ignore=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    c = shape[1]
    if probabilities:
        y = torch.rand(shape, generator=g, dtype=torch.float64)  # need not sum to 1
        y = y.to(dtype)
    else:
        y = torch.randint(0, c, (shape[0], *shape[2:]), generator=g)
        if ignore is not None:
            y.view(-1)[::3] = ignore
    w = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    return x.to(dtype), y, w.to(dtype)


def check_against(fn_ours, fn_ref, x, upstream, dtype):
    """Loss and input gradient of ``fn_ours`` (in ``dtype``) against ``fn_ref`` in float64."""
    ours_in = x.detach().clone().requires_grad_()
    loss = fn_ours(ours_in)
    loss.backward(upstream.to(loss.dtype))
    ref_in = x.detach().double().requires_grad_()
    ref = fn_ref(ref_in)
    ref.backward(upstream.double())
    rtol, atol = TOL[dtype]
    assert loss.dtype == dtype and loss.shape == ref.shape
    scale = max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(loss.detach().double(), ref.detach(), rtol=rtol, atol=atol * scale)
    torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, rtol=rtol, atol=atol)


def _upstream(reduction, shape, seed=1):
    if reduction != "none":
        return torch.tensor(0.75)
    g = torch.Generator().manual_seed(seed)
    return torch.rand((shape[0], *shape[2:]), generator=g) + 0.5


SHAPES = [(10, 5), (3, 4, 6), (2, 5, 3, 2)]
COMBOS = [  # (weight, label_smoothing, z_loss, softcap)
    (False, 0.0, 0.0, None),
    (True, 0.0, 0.0, None),
    (True, 0.2, 0.0, None),
    (False, 0.0, 1e-2, None),
    (False, 0.0, 0.0, 2.5),
    (True, 0.1, 5e-2, 3.0),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("probabilities", [False, True], ids=["labels", "probabilities"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: f"w{int(c[0])}-eps{c[1]}-z{c[2]}-cap{c[3]}")
def test_cross_entropy_matches_torch(dtype, probabilities, shape, reduction, combo):
    weighted, eps, zeta, cap = combo
    x, y, w = make(shape, dtype, probabilities=probabilities, ignore=None if probabilities else -100)
    weight = w if weighted else None
    opts = dict(reduction=reduction, label_smoothing=eps)
    extra = dict(z_loss=zeta, softcap=cap)
    y64 = y.double() if probabilities else y
    w64 = None if weight is None else weight.double()

    def ours(t):
        return cross_entropy(t, y, weight=weight, **opts, **extra)

    def ref(t):
        return torch_formula(t, y64, weight=w64, **opts, **extra)

    check_against(ours, ref, x, _upstream(reduction, shape), dtype)


@pytest.mark.parametrize("ignore_index", [-100, -1])
def test_probabilities_ignore_negative_ignore_index_like_torch(ignore_index):
    x, q, _ = make((6, 4), torch.float64, probabilities=True)
    want = F.cross_entropy(x, q, ignore_index=ignore_index)
    torch.testing.assert_close(cross_entropy(x, q, ignore_index=ignore_index), want)


def test_probabilities_refuse_nonnegative_ignore_index_like_torch():
    x, q, _ = make((6, 4), torch.float64, probabilities=True)
    with pytest.raises(RuntimeError):  # torch's own rule, which the adapter follows
        F.cross_entropy(x, q, ignore_index=0)
    with pytest.raises(ValueError, match=r"ignore_index=0 is not supported with class-probability targets"):
        cross_entropy(x, q, ignore_index=0)


def test_probability_target_requiring_grad_is_refused():
    x, q, _ = make((6, 4), torch.float64, probabilities=True)
    with pytest.raises(ValueError, match=r"target requires grad.*target.detach\(\)"):
        cross_entropy(x, q.requires_grad_())
    with torch.no_grad():
        cross_entropy(x, q)  # nothing is differentiated there


def test_kdim_bad_label_names_its_position():
    x, y, _ = make((2, 4, 3), torch.float64, probabilities=False)
    y[1, 2] = 9
    with pytest.raises(ValueError, match=r"target\[1, 2\] = 9 is out of range"):
        cross_entropy(x, y)


def test_kdim_label_shape_message():
    x, y, _ = make((2, 4, 3), torch.float64, probabilities=False)
    with pytest.raises(ValueError, match=r"target must have shape \(2, 3\) .* got shape \(2, 4\)"):
        cross_entropy(x, y[:, None].expand(2, 4, 3)[:, :, 0])


def test_softcap_keeps_huge_logits_finite():
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2])
    loss = cross_entropy(x, y, softcap=5.0, z_loss=1e-3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    ref_in = x.detach().clone().requires_grad_()
    torch_formula(ref_in, y, softcap=5.0, z_loss=1e-3).backward()
    torch.testing.assert_close(x.grad, ref_in.grad)


def test_module_passes_z_loss_and_softcap():
    x, y, w = make((3, 5, 4), torch.float64, probabilities=False, ignore=-100)
    mod = CrossEntropyLoss(weight=w, label_smoothing=0.1, z_loss=0.02, softcap=4.0)
    want = torch_formula(x, y, weight=w, label_smoothing=0.1, z_loss=0.02, softcap=4.0)
    torch.testing.assert_close(mod(x, y), want)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("zeta,cap", [(1e-2, None), (0.0, 3.0), (5e-2, 2.0)])
def test_linear_cross_entropy_z_loss_softcap(reduction, zeta, cap):
    g = torch.Generator().manual_seed(3)
    n, d, c = 37, 6, 9
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    lw = torch.randn(c, d, generator=g, dtype=torch.float64)
    lb = torch.randn(c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    y[::5] = -100
    weight = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    opts = dict(weight=weight, reduction=reduction, label_smoothing=0.1, z_loss=zeta, softcap=cap)
    upstream = _upstream(reduction, (n, c)).double()
    leaves = [t.clone().requires_grad_() for t in (x, lw, lb)]
    loss = linear_cross_entropy(leaves[0], leaves[1], y, leaves[2], chunk_rows=8, **opts)
    loss.backward(upstream)
    refs = [t.clone().requires_grad_() for t in (x, lw, lb)]
    want = torch_formula(F.linear(*refs), y, **opts)
    want.backward(upstream)
    torch.testing.assert_close(loss, want.detach())
    for a, b in zip(leaves, refs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    mod = LinearCrossEntropyLoss(
        weight=weight, reduction=reduction, label_smoothing=0.1, z_loss=zeta, softcap=cap
    )
    torch.testing.assert_close(mod(x, lw, y, lb), want.detach())


@pytest.mark.parametrize("probabilities", [False, True], ids=["labels", "probabilities"])
def test_softmax_loss_of_a_tensor_requiring_grad_carries_the_new_options(probabilities):
    """``xs.softmax_loss`` routes such a tensor through the adapter: z_loss, softcap and K-dim reach it."""
    from _oracle import oracle_softmax_loss

    import xsoftmax as xs

    x, y, w = make((2, 5, 3), torch.float64, probabilities=probabilities)
    opts = dict(weight=w, label_smoothing=0.1, z_loss=0.05, softcap=3.0, reduction="sum")
    if not probabilities:
        y[0, 1] = -100
        opts["ignore_index"] = -100
    leaf = x.clone().requires_grad_()
    loss, dscores = xs.softmax_loss(leaf, y, **opts)
    loss.backward()
    want_loss, want_grad = oracle_softmax_loss(x.numpy(), y.numpy(), **{**opts, "weight": w.numpy()})
    torch.testing.assert_close(loss.detach(), torch.tensor(float(want_loss), dtype=torch.float64))
    torch.testing.assert_close(leaf.grad, torch.from_numpy(want_grad))
    torch.testing.assert_close(dscores, torch.from_numpy(want_grad))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("probabilities", [False, True], ids=["labels", "probabilities"])
def test_half_precision_is_computed_in_float32(dtype, probabilities):
    x, y, w = make((4, 5, 3), dtype, probabilities=probabilities)
    opts = dict(weight=w, label_smoothing=0.1, z_loss=1e-2, softcap=4.0)
    leaf = x.clone().requires_grad_()
    loss = cross_entropy(leaf, y, **opts)
    loss.backward()
    ref_in = x.double().requires_grad_()
    y64 = y.double() if probabilities else y
    want = torch_formula(ref_in, y64, **{**opts, "weight": w.double()})
    want.backward()
    rtol, atol = {torch.float16: (1e-2, 2e-3), torch.bfloat16: (4e-2, 2e-2)}[dtype]  # one rounding
    assert loss.dtype == dtype and leaf.grad.dtype == dtype
    torch.testing.assert_close(loss.double(), want.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(leaf.grad.double(), ref_in.grad, rtol=rtol, atol=atol)
