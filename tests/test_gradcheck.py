"""Every backward pass against centered-difference gradients (xs.gradcheck), on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import xsoftmax as xs
from xsoftmax._backend import backend_name
from xsoftmax.gradcheck import numerical_gradient, numerical_gradient_array, rel_error

from _helpers import assert_close, on

# These functions compute from their argument, so JAX's, Dask's and array-api-strict's
# warning that x cannot be perturbed in place (the CS231n idiom) does not apply.
pytestmark = pytest.mark.filterwarnings("ignore::xsoftmax.gradcheck.NotInPlaceWarning")

RNG = np.random.default_rng(0)


def _loss_only(y, **opts):
    return lambda s: xs.softmax_loss(s, y, **opts)[0]


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"reduction": "sum"},
        {"weight": [0.5, 2.0, 1.0, 1.5], "ignore_index": 1},
        {"label_smoothing": 0.2, "weight": [0.5, 2.0, 1.0, 1.5]},
        {"reduction": "none", "label_smoothing": 0.1, "ignore_index": -100},
    ],
    ids=["mean", "sum", "weight-ignore", "smooth-weight", "none-smooth"],
)
def test_softmax_loss_dscores(xp, opts):
    scores = RNG.standard_normal((4, 4)) * 2
    y = on(xp, np.array([0, 1, 3, -100 if opts.get("ignore_index") == -100 else 2]))
    opts = dict(opts)
    if "weight" in opts:
        opts["weight"] = on(xp, np.array(opts["weight"]))
    s = on(xp, scores)
    loss, d = xs.softmax_loss(s, y, **opts)
    if opts.get("reduction") == "none":
        dout = on(xp, RNG.standard_normal(4))
        # per-row losses: Σ_i dout_i ∂loss_i/∂s_i = dout_i · dscores_i
        num = numerical_gradient_array(_loss_only(y, **opts), s, dout)
        analytic = xs.to_numpy(d) * xs.to_numpy(dout)[:, None]
    else:
        num = numerical_gradient(_loss_only(y, **opts), s)
        analytic = xs.to_numpy(d)
    assert backend_name(xs._backend.array_namespace(num)) == backend_name(xp)
    assert rel_error(num, analytic) < 1e-7


def test_affine_backward(xp):
    x, w, b = RNG.standard_normal((3, 2, 2)), RNG.standard_normal((4, 3)), RNG.standard_normal(3)
    dout = RNG.standard_normal((3, 3))
    X, Wt, Bt, D = on(xp, x), on(xp, w), on(xp, b), on(xp, dout)
    _, cache = xs.affine_forward(X, Wt, Bt)
    dx, dw, db = xs.affine_backward(D, cache)
    ndx = numerical_gradient_array(lambda v: xs.affine_forward(v, Wt, Bt)[0], X, D)
    ndw = numerical_gradient_array(lambda v: xs.affine_forward(X, v, Bt)[0], Wt, D)
    ndb = numerical_gradient_array(lambda v: xs.affine_forward(X, Wt, v)[0], Bt, D)
    assert rel_error(ndx, dx) < 1e-8
    assert rel_error(ndw, dw) < 1e-8
    assert rel_error(ndb, db) < 1e-8


def test_relu_backward(xp):
    # keep away from the kink at 0, where the centered difference is meaningless
    x = RNG.standard_normal((3, 4))
    x = np.where(np.abs(x) < 0.1, 0.5, x)
    dout = RNG.standard_normal((3, 4))
    X, D = on(xp, x), on(xp, dout)
    _, cache = xs.relu_forward(X)
    dx = xs.relu_backward(D, cache)
    ndx = numerical_gradient_array(lambda v: xs.relu_forward(v)[0], X, D)
    assert rel_error(ndx, dx) < 1e-8


def test_affine_relu_backward(xp):
    x, w, b = RNG.standard_normal((3, 4)), RNG.standard_normal((4, 5)), RNG.standard_normal(5)
    dout = RNG.standard_normal((3, 5))
    X, Wt, Bt, D = on(xp, x), on(xp, w), on(xp, b), on(xp, dout)
    _, cache = xs.affine_relu_forward(X, Wt, Bt)
    dx, dw, db = xs.affine_relu_backward(D, cache)
    f = xs.affine_relu_forward
    assert rel_error(numerical_gradient_array(lambda v: f(v, Wt, Bt)[0], X, D), dx) < 1e-7
    assert rel_error(numerical_gradient_array(lambda v: f(X, v, Bt)[0], Wt, D), dw) < 1e-7
    assert rel_error(numerical_gradient_array(lambda v: f(X, Wt, v)[0], Bt, D), db) < 1e-7


# ------------------------------------------------------------ the tools themselves


def test_numerical_gradient_of_known_function(xp):
    """f(x) = Σ x³ has gradient 3x²; the input is not modified (JAX: immutable anyway)."""
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    X = on(xp, x)
    g = numerical_gradient(lambda v: xp.sum(v**3), X)
    assert_close(g, 3 * x**2, xp, rtol=1e-8, atol=1e-8, like=X)
    assert tuple(g.shape) == x.shape
    assert_close(X, x, xp, rtol=0, atol=0)


def test_numerical_gradient_array_is_a_vjp(xp):
    """f(x) = x · A (matrix product): Σ_j dout_j ∂f_j/∂x = dout · Aᵀ."""
    a = RNG.standard_normal((3, 2))
    x = RNG.standard_normal((4, 3))
    dout = RNG.standard_normal((4, 2))
    A = on(xp, a)
    g = numerical_gradient_array(lambda v: v @ A, on(xp, x), on(xp, dout))
    assert_close(g, dout @ a.T, xp, rtol=1e-8, atol=1e-8)


def test_numerical_gradient_float32_input_is_differenced_in_float64(xp):
    """A float32 input is copied to float64 first, so h = 1e-5 still resolves the slope."""
    x = np.array([0.3, -1.2, 2.0])
    g = numerical_gradient(lambda v: xp.sum(xp.exp(v)), on(xp, x, "float32"))
    np.testing.assert_allclose(xs.to_numpy(g), np.exp(x.astype(np.float32)), rtol=1e-6)


def test_rel_error(xp):
    a = on(xp, np.array([1.0, 2.0, 0.0]))
    b = on(xp, np.array([1.0, 2.2, 0.0]))
    assert rel_error(a, a) == 0.0
    assert rel_error(a, b) == pytest.approx(0.2 / 4.2)
    # the 1e-8 floor: tiny absolute differences near zero are not blown up
    assert rel_error(on(xp, np.array([0.0])), on(xp, np.array([1e-12]))) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="same shape"):
        rel_error(a, on(xp, np.zeros(2)))


def test_rel_error_across_backends():
    """rel_error only reads values, so it compares arrays of two libraries (or lists)."""
    torch = pytest.importorskip("torch")
    assert rel_error(np.array([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert rel_error([1.0, 3.0], np.array([1.0, 1.0])) == pytest.approx(0.5)


def test_numerical_gradient_rejects_integers(xp):
    with pytest.raises(TypeError, match="real floating"):
        numerical_gradient(lambda v: xp.sum(v), on(xp, np.array([1, 2])))


def test_dout_must_match_the_output_shape():
    """A broadcastable but wrong ``dout`` would give a wrong product: refuse it."""
    x = np.arange(4.0).reshape(2, 2)
    with pytest.raises(ValueError, match=r"dout must have the shape of f\(x\) \(2, 2\), got shape \(2,\)"):
        xs.gradcheck.numerical_gradient_array(lambda v: v * 2.0, x, np.ones(2))
    with pytest.raises(ValueError, match="must return a scalar"):
        xs.gradcheck.numerical_gradient(lambda v: v * 2.0, x)
