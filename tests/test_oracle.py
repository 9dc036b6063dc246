"""The float64 oracle (tests/_oracle.py) against torch autograd, values and gradients.

Cross-entropy (labels or probabilities, K-dim, weight, ignore_index, label
smoothing, reductions) is ``torch.nn.functional.cross_entropy``; z-loss and
softcap are autograd of their formula written in torch
(``c·tanh(s/c)`` first, then ``ζ · logsumexp²`` per counted row, "mean"
divided by the number of counted rows).
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest
from _oracle import oracle_softmax_loss
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
F = torch.nn.functional

TORCH_NO_IGNORE = -100  # torch's default; never a label in these tests


def torch_loss(s, y, *, reduction="mean", weight=None, ignore_index=None, label_smoothing=0.0,
               z_loss=0.0, softcap=None):  # fmt: skip
    """``(loss, dscores)`` by torch autograd of the formula, in float64."""
    st_ = torch.tensor(np.asarray(s, dtype=np.float64), requires_grad=True)
    yt = torch.tensor(np.asarray(y))
    wt = None if weight is None else torch.tensor(np.asarray(weight, dtype=np.float64))
    ii = TORCH_NO_IGNORE if ignore_index is None else ignore_index
    z = softcap * torch.tanh(st_ / softcap) if softcap is not None else st_
    loss = F.cross_entropy(z, yt, weight=wt, ignore_index=ii, reduction=reduction,
                           label_smoothing=label_smoothing)  # fmt: skip
    if z_loss:
        lse = torch.logsumexp(z, dim=1)
        valid = torch.ones_like(lse, dtype=torch.bool) if yt.is_floating_point() else yt != ii
        rows = torch.where(valid, z_loss * lse**2, torch.zeros_like(lse))
        if reduction == "none":
            loss = loss + rows
        elif reduction == "sum":
            loss = loss + rows.sum()
        else:
            loss = loss + rows.sum() / valid.sum()
    loss.sum().backward()  # "none": rows are independent, so this is each row's own gradient
    return loss.detach().numpy(), st_.grad.numpy()


def assert_same(s, y, rtol=1e-10, atol=1e-12, **options):
    """The oracle equals torch on ``(s, y, options)``: loss and gradient, shapes included."""
    loss, grad = oracle_softmax_loss(s, y, **options)
    t_loss, t_grad = torch_loss(s, y, **options)
    assert loss.shape == t_loss.shape and grad.shape == np.shape(s)
    np.testing.assert_allclose(loss, t_loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, t_grad, rtol=rtol, atol=atol)
    return loss, grad


def batch(rng, n, c, dims, target, ignore_index=None):
    """Scores ``(n, c, *dims)`` and labels (about a quarter ignored) or probabilities."""
    s = rng.normal(scale=3.0, size=(n, c, *dims))
    if target == "probabilities":
        q = rng.uniform(size=s.shape)
        q[rng.uniform(size=q.shape) < 0.3] = 0.0  # sparse targets, not summing to 1
        return s, q
    y = rng.integers(0, c, size=(n, *dims))
    if ignore_index is not None:
        y[rng.uniform(size=y.shape) < 0.25] = ignore_index
    return s, y


OPTIONS = list(
    itertools.product(
        ("labels", "probabilities"),
        ((), (3,), (2, 3)),  # plain (N, C), K = 1, K = 2
        (False, True),  # weight
        (None, 1, -7),  # ignore_index: none, an in-range class, a negative sentinel
        (0.0, 0.15),  # label_smoothing
        (0.0, 0.3),  # z_loss
        (None, 2.5),  # softcap
    )
)


@pytest.mark.parametrize(
    "target,dims,weighted,ignore_index,eps,zeta,cap",
    [o for o in OPTIONS if not (o[0] == "probabilities" and o[3] is not None)],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
def test_every_combination(target, dims, weighted, ignore_index, eps, zeta, cap):
    """Each reduction of each option set, against F.cross_entropy (+ the z/softcap formula)."""
    rng = np.random.default_rng(zlib.crc32(repr((target, dims, weighted, ignore_index, eps)).encode()))
    s, y = batch(rng, 5, 4, dims, target, ignore_index)
    w = rng.uniform(0.2, 2.0, size=4) if weighted else None
    s_before, y_before = s.copy(), y.copy()
    for reduction in ("mean", "sum", "none"):
        assert_same(s, y, reduction=reduction, weight=w, ignore_index=ignore_index, label_smoothing=eps,
                    z_loss=zeta, softcap=cap)  # fmt: skip
    np.testing.assert_array_equal(s, s_before)  # inputs untouched
    np.testing.assert_array_equal(y, y_before)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    c=st.integers(1, 7),
    dims=st.sampled_from([(), (1,), (4,), (2, 3)]),
    target=st.sampled_from(["labels", "probabilities"]),
    weighted=st.booleans(),
    ignore=st.booleans(),
    eps=st.sampled_from([0.0, 0.05, 1.0]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    zeta=st.sampled_from([0.0, 1e-4, 2.0]),
    cap=st.sampled_from([None, 0.5, 30.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_cases(n, c, dims, target, weighted, ignore, eps, reduction, zeta, cap, seed):
    rng = np.random.default_rng(seed)
    ignore_index = 0 if ignore and target == "labels" else None
    s, y = batch(rng, n, c, dims, target, ignore_index)
    w = rng.uniform(0.0, 3.0, size=c) if weighted else None
    assert_same(s, y, reduction=reduction, weight=w, ignore_index=ignore_index, label_smoothing=eps,
                z_loss=zeta, softcap=cap, rtol=1e-9, atol=1e-11)  # fmt: skip


def test_kdim_is_a_reshape_of_rows():
    """K-dim equals the (N·d, C) batch of its positions, "none" reshaped back."""
    rng = np.random.default_rng(1)
    s, y = batch(rng, 3, 5, (2, 4), "labels", ignore_index=-1)
    w = rng.uniform(0.5, 2.0, size=5)
    options = dict(weight=w, ignore_index=-1, label_smoothing=0.1, z_loss=0.2, softcap=4.0)
    rows_s = np.moveaxis(s, 1, -1).reshape(-1, 5)
    for reduction in ("mean", "sum", "none"):
        loss, grad = oracle_softmax_loss(s, y, reduction=reduction, **options)
        r_loss, r_grad = oracle_softmax_loss(rows_s, y.reshape(-1), reduction=reduction, **options)
        np.testing.assert_allclose(loss, r_loss.reshape(loss.shape), rtol=1e-14)
        np.testing.assert_allclose(np.moveaxis(grad, 1, -1).reshape(-1, 5), r_grad, rtol=1e-14, atol=1e-16)


def test_z_loss_mean_counts_rows_not_weights():
    """With weights, "mean" divides CE by Σ w_{y_i} but the z-term by the number of kept rows."""
    s = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]])
    y = np.array([0, 2, -1])
    w = np.array([3.0, 1.0, 0.5])
    loss, _ = oracle_softmax_loss(s, y, weight=w, ignore_index=-1, z_loss=0.1)
    ce, _ = oracle_softmax_loss(s, y, weight=w, ignore_index=-1)
    lse = np.log(np.exp(s).sum(axis=1))
    np.testing.assert_allclose(loss - ce, 0.1 * (lse[0] ** 2 + lse[1] ** 2) / 2, rtol=1e-13)


def test_huge_logits_with_softcap_stay_finite():
    """±1e4 logits: tanh saturates, the capped logits are ±c and their gradient exactly 0."""
    s = np.array([[1e4, -1e4, 0.5, 3.0], [-1e4, -1e4, 1e4, 1e4]])
    for y in (np.array([1, 2]), np.abs(np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 1.0, 0.5, 0.0]]))):
        for reduction in ("mean", "sum", "none"):
            loss, grad = assert_same(s, y, reduction=reduction, z_loss=0.01, softcap=30.0,
                                     label_smoothing=0.1)  # fmt: skip
            assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
            assert np.all(grad[np.abs(s) == 1e4] == 0.0)


def test_huge_logits_plain():
    s = np.array([[0.0, 1e4], [-1e4, 1e4], [1e4, 1e4]])
    loss, grad = assert_same(s, np.array([0, 0, 1]), reduction="none")
    np.testing.assert_allclose(loss, [1e4, 2e4, np.log(2.0)])
    assert_same(s, np.array([0, 0, 1]), z_loss=1e-4)


def test_minus_inf_masks_plain():
    """A −inf class gets probability 0 and gradient 0; the loss stays finite."""
    s = np.array([[0.0, -np.inf, 1.0], [-np.inf, 2.0, -np.inf], [3.0, 1.0, -np.inf]])
    y = np.array([0, 1, 1])
    for reduction in ("mean", "sum", "none"):
        for options in ({}, {"weight": np.array([1.0, 2.0, 0.5])}, {"z_loss": 0.1}):
            loss, grad = assert_same(s, y, reduction=reduction, **options)
            assert np.all(np.isfinite(loss))
            assert np.all(grad[np.isinf(s)] == 0.0)


def test_minus_inf_masks_with_smoothing_or_probabilities_follow_torch():
    """torch: smoothing gives an inf loss (−ε/C·w_k gradient at the mask); probabilities NaN (0·inf).

    The gradients stay finite in both: the oracle keeps torch's numbers.
    """
    s = np.array([[0.0, -np.inf, 1.0], [1.0, 2.0, 3.0]])
    loss, grad = assert_same(s, np.array([0, 2]), label_smoothing=0.3)
    assert loss == np.inf and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[0, 1], -0.3 / 3 / 2)
    loss, grad = assert_same(s, np.array([0, 2]), label_smoothing=0.3, weight=np.array([1.0, 0.0, 1.0]))
    assert np.isnan(loss) and np.all(np.isfinite(grad))  # w_k = 0 at the mask: 0 · inf
    q = np.array([[0.4, 0.0, 0.6], [0.2, 0.2, 0.6]])
    loss, grad = assert_same(s, q)
    assert np.isnan(loss) and np.all(np.isfinite(grad)) and grad[0, 1] == 0.0


def test_minus_inf_with_softcap_becomes_minus_c():
    """softcap maps −inf to −c: the masked class is no longer impossible (torch's formula agrees)."""
    s = np.array([[0.0, -np.inf, 1.0]])
    loss, grad = assert_same(s, np.array([1]), softcap=2.0, reduction="sum")
    lse = np.log(np.exp(2 * np.tanh(0.0)) + np.exp(-2.0) + np.exp(2 * np.tanh(0.5)))
    np.testing.assert_allclose(loss, lse + 2.0)
    assert grad[0, 1] == 0.0


def test_single_row_single_class():
    """N = 1, C = 1: the cross-entropy is 0; the z-loss alone remains (ζ s², gradient 2ζ s)."""
    s = np.array([[0.7]])
    for y in (np.array([0]), np.array([[0.6]])):
        for reduction in ("mean", "sum", "none"):
            loss, grad = assert_same(s, y, reduction=reduction, label_smoothing=0.2)
            assert np.all(loss == 0.0) and np.all(grad == 0.0)
            loss, grad = assert_same(s, y, reduction=reduction, z_loss=0.5, softcap=3.0)
            cap = 3.0 * np.tanh(0.7 / 3.0)
            np.testing.assert_allclose(loss, np.full(loss.shape, 0.5 * cap**2))
            np.testing.assert_allclose(grad, [[2 * 0.5 * cap * (1 - np.tanh(0.7 / 3.0) ** 2)]])
    assert_same(np.array([[[0.3, -2.0]]]), np.array([[0, 0]]), z_loss=0.1)  # N = 1, C = 1, d = 2


@pytest.mark.parametrize("options", [{}, {"weight": np.array([1.0, 2.0])}, {"z_loss": 0.5, "softcap": 3.0}])
def test_all_rows_ignored(options):
    """Every row ignored: "mean" is NaN (0/0, as torch), "sum" 0, "none" zeros; gradient exactly 0."""
    s = np.array([[1.0, 2.0], [3.0, -1.0]])
    y = np.array([-1, -1])
    loss, grad = assert_same(s, y, ignore_index=-1, **options)
    assert np.isnan(loss) and np.all(grad == 0.0)
    loss, grad = assert_same(s, y, ignore_index=-1, reduction="sum", **options)
    assert loss == 0.0 and np.all(grad == 0.0)
    loss, grad = assert_same(s, y, ignore_index=-1, reduction="none", **options)
    assert np.all(loss == 0.0) and np.all(grad == 0.0)


def test_zero_weight_denominator_is_nan_like_torch():
    """Only zero-weight labels: D = 0, the "mean" and the kept rows' gradient are NaN in torch too."""
    s = np.array([[1.0, 2.0, 0.0], [0.5, 0.1, 0.2]])
    loss, grad = assert_same(s, np.array([1, 1]), weight=np.array([1.0, 0.0, 1.0]), rtol=0, atol=0)
    assert np.isnan(loss) and np.all(np.isnan(grad))


def test_probabilities_mean_divides_by_positions_not_weights():
    s = np.zeros((2, 3, 2))
    q = np.zeros((2, 3, 2))
    q[:, 0] = 1.0
    w = np.array([4.0, 1.0, 1.0])
    loss, _ = assert_same(s, q, weight=w)
    np.testing.assert_allclose(loss, 4.0 * np.log(3.0))  # Σ over 4 positions of 4 log 3, divided by 4


@pytest.mark.parametrize(
    "s,y,options,error,match",
    [
        (np.zeros((2, 3)), np.zeros((2, 3)), {"ignore_index": -100}, ValueError, "ignore_index"),
        (np.zeros((2, 3)), np.zeros((2, 4)), {}, ValueError, r"\(2, 3\).*\(2, 4\)"),
        (np.zeros((2, 3, 4)), np.zeros((2, 3), dtype=int), {}, ValueError, r"\(2, 4\).*\(2, 3\)"),
        (np.zeros((2, 3)), np.array([0, 3]), {}, ValueError, "labels"),
        (np.zeros((2, 3)), np.array([0, 1]), {"z_loss": -1.0}, ValueError, "z_loss"),
        (np.zeros((2, 3)), np.array([0, 1]), {"softcap": 0.0}, ValueError, "softcap"),
        (np.zeros((2, 3)), np.array([0, 1]), {"reduction": "avg"}, ValueError, "reduction"),
        (np.zeros((2, 3)), np.array([True, False]), {}, TypeError, "dtype bool"),
    ],
)
def test_bad_input(s, y, options, error, match):
    with pytest.raises(error, match=match):
        oracle_softmax_loss(s, y, **options)
