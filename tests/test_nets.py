"""TwoLayerNet / FullyConnectedNet: values against a plain NumPy network, gradients
checked numerically, on every backend."""

from __future__ import annotations

import array_api_compat as compat
import numpy as np
import pytest

import xsoftmax as xs
from xsoftmax._backend import backend_name
from xsoftmax.gradcheck import numerical_gradient, rel_error
from xsoftmax.nets import FullyConnectedNet, TwoLayerNet

from _helpers import assert_close, on

# These functions compute from their argument, so JAX's, Dask's and array-api-strict's
# warning that x cannot be perturbed in place (the CS231n idiom) does not apply.
pytestmark = pytest.mark.filterwarnings("ignore::xsoftmax.gradcheck.NotInPlaceWarning")

RNG = np.random.default_rng(1)
X = RNG.standard_normal((5, 3))
Y = np.array([0, 2, 1, 1, 2])


def _numpy_net(params, X, y, reg):
    """float64 forward pass and loss of a ReLU net, written out independently."""
    h = np.asarray(X, dtype=np.float64)
    n_layers = len(params) // 2
    for layer in range(1, n_layers + 1):
        h = h @ params[f"W{layer}"] + params[f"b{layer}"]
        if layer < n_layers:
            h = np.maximum(h, 0.0)
    m = h.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(h - m).sum(axis=1, keepdims=True)))[:, 0]
    data = np.mean(lse - h[np.arange(len(y)), y])
    l2 = sum(np.sum(params[f"W{layer}"] ** 2) for layer in range(1, n_layers + 1))
    return h, data + 0.5 * reg * l2


def _host(params):
    return {k: xs.to_numpy(v).astype(np.float64) for k, v in params.items()}


def _gradcheck(net, X, y):
    """Largest relative error between analytic and centered-difference gradients."""
    _, grads = net.loss(X, y)
    worst = {}
    for name in list(net.params):
        saved = net.params[name]

        def f(w, name=name, saved=saved):
            net.params[name] = w
            try:
                return net.loss(X, y)[0]
            finally:
                net.params[name] = saved

        worst[name] = rel_error(numerical_gradient(f, saved), grads[name])
    return worst


def test_params_shapes_backend_dtype(xp):
    net = TwoLayerNet(3, 4, 3, backend=backend_name(xp), seed=0)
    assert list(net.params) == ["W1", "b1", "W2", "b2"]
    shapes = {k: tuple(v.shape) for k, v in net.params.items()}
    assert shapes == {"W1": (3, 4), "b1": (4,), "W2": (4, 3), "b2": (3,)}
    for v in net.params.values():
        assert backend_name(compat.array_namespace(v)) == backend_name(xp)
        assert v.dtype == xp.float32
    host = _host(net.params)
    assert np.all(host["b1"] == 0) and np.all(host["b2"] == 0)
    # weight_scale · N(0, 1): 1e-3 by default
    assert 1e-4 < np.std(host["W1"]) < 1e-2


def test_same_seed_same_params_on_every_backend(xp):
    here = _host(TwoLayerNet(3, 4, 3, backend=backend_name(xp), dtype="float64", seed=7).params)
    ref = _host(TwoLayerNet(3, 4, 3, backend="numpy", dtype="float64", seed=7).params)
    for k in ref:
        np.testing.assert_array_equal(here[k], ref[k])
    other = _host(TwoLayerNet(3, 4, 3, backend="numpy", dtype="float64", seed=8).params)
    assert not np.array_equal(other["W1"], ref["W1"])


def test_scores_and_loss_match_numpy_network(xp):
    net = TwoLayerNet(3, 4, 3, weight_scale=0.5, reg=0.3, backend=backend_name(xp), dtype="float64", seed=2)
    scores_ref, loss_ref = _numpy_net(_host(net.params), X, Y, 0.3)
    x, y = on(xp, X, dtype=xp.float64), on(xp, Y)
    assert_close(net.loss(x), scores_ref, xp, dtype=xp.float64)
    loss, grads = net.loss(x, y)
    assert tuple(loss.shape) == ()
    assert_close(loss, loss_ref, xp, dtype=xp.float64)
    assert {k: tuple(g.shape) for k, g in grads.items()} == {k: tuple(p.shape) for k, p in net.params.items()}
    np.testing.assert_array_equal(xs.to_numpy(net.predict(x)), np.argmax(scores_ref, axis=1))


def test_two_layer_gradients_numerically(xp):
    net = TwoLayerNet(3, 4, 3, weight_scale=0.5, reg=0.7, backend=backend_name(xp), dtype="float64", seed=3)
    worst = _gradcheck(net, on(xp, X, dtype=xp.float64), on(xp, Y))
    assert max(worst.values()) < 1e-6, worst


def test_fully_connected_gradients_numerically(xp):
    net = FullyConnectedNet(
        [4, 3], input_dim=3, num_classes=3, weight_scale=0.7, reg=0.2,
        backend=backend_name(xp), dtype="float64", seed=4,
    )
    assert sorted(net.params) == ["W1", "W2", "W3", "b1", "b2", "b3"]
    x = on(xp, X, dtype=xp.float64)
    scores_ref, loss_ref = _numpy_net(_host(net.params), X, Y, 0.2)
    assert_close(net.loss(x), scores_ref, xp, dtype=xp.float64)
    assert_close(net.loss(x, on(xp, Y))[0], loss_ref, xp, dtype=xp.float64)
    worst = _gradcheck(net, x, on(xp, Y))
    assert max(worst.values()) < 1e-6, worst


def test_l2_term_and_its_gradient():
    """Adding reg changes the loss by ½·reg·ΣW² and each dW by reg·W, biases not at all."""
    kw = dict(weight_scale=0.5, backend="numpy", dtype="float64", seed=5)
    plain, ridge = TwoLayerNet(3, 4, 3, reg=0.0, **kw), TwoLayerNet(3, 4, 3, reg=0.25, **kw)
    (l0, g0), (l1, g1) = plain.loss(X, Y), ridge.loss(X, Y)
    w1, w2 = plain.params["W1"], plain.params["W2"]
    np.testing.assert_allclose(float(l1) - float(l0), 0.125 * (np.sum(w1**2) + np.sum(w2**2)), rtol=1e-12)
    np.testing.assert_allclose(g1["W1"] - g0["W1"], 0.25 * w1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g1["W2"] - g0["W2"], 0.25 * w2, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(g1["b1"], g0["b1"])
    np.testing.assert_array_equal(g1["b2"], g0["b2"])


def test_small_weights_start_at_log_c():
    """With weights ~1e-3 the scores are ~0, so the loss starts at log C."""
    net = TwoLayerNet(3, 10, 3, seed=0)
    loss, _ = net.loss(X.astype(np.float32), Y)
    assert abs(float(loss) - np.log(3)) < 1e-3


def test_float32_net_keeps_float32():
    net = TwoLayerNet(3, 4, 3, seed=0)
    loss, grads = net.loss(X.astype(np.float32), Y)
    assert loss.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_dims=[], input_dim=4, num_classes=3), "at least one hidden layer"),
        (dict(hidden_dims=5, input_dim=4, num_classes=3), "sequence of widths"),
        (dict(hidden_dims=[5, 0], input_dim=4, num_classes=3), r"hidden_dims\[1\]"),
        (dict(hidden_dims=[5], input_dim=0, num_classes=3), "input_dim"),
        (dict(hidden_dims=[5], input_dim=4, num_classes=3, reg=-1.0), "reg"),
        (dict(hidden_dims=[5], input_dim=4, num_classes=3, weight_scale=float("nan")), "weight_scale"),
        (dict(hidden_dims=[5], input_dim=4, num_classes=3, backend="nope"), "backend"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FullyConnectedNet(**kwargs)


def test_wrong_feature_count_and_labels():
    net = TwoLayerNet(3, 4, 3, seed=0)
    with pytest.raises(ValueError, match="w must have shape"):
        net.loss(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="out of range"):
        net.loss(X.astype(np.float32), np.array([0, 1, 2, 3, 0]))
