"""CS231n assignment code runs unchanged where the names match (issue 16, part 1).

The gradient-check idiom (``lambda _: model.loss(X, y)[0]``), RMSProp, the
constructor defaults and the Solver's options, each against what the
assignments' own code does.
"""

from __future__ import annotations

import io
import pickle
import warnings

import numpy as np
import pytest
from conftest import require_backend

import xsoftmax as xs
from xsoftmax import datasets, train
from xsoftmax.gradcheck import NotInPlaceWarning, ZeroGradientWarning, numerical_gradient, rel_error
from xsoftmax.nets import FullyConnectedNet, TwoLayerNet

RNG = np.random.default_rng(16)


def _problem(backend, dtype="float64"):
    X = xs.asarray(RNG.standard_normal((6, 5)), backend=backend, dtype=dtype)
    y = xs.asarray(np.array([0, 1, 2, 0, 1, 2]), backend=backend)
    model = FullyConnectedNet([7, 4], input_dim=5, num_classes=3, reg=0.1, weight_scale=0.3,
                              dtype=dtype, seed=1, backend=backend)
    return model, X, y


# ---------------------------------------------------------------- the gradient-check idiom


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_lambda_ignoring_its_argument_checks_every_parameter(backend):
    """CS231n: ``f = lambda _: model.loss(X, y)[0]; eval_numerical_gradient(f, model.params[name])``."""
    require_backend(backend)
    model, X, y = _problem(backend)
    _, grads = model.loss(X, y)
    before = {k: xs.to_numpy(v).copy() for k, v in model.params.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither warning may fire on a backend that writes in place
        for name in sorted(model.params):
            f = lambda _: model.loss(X, y)[0]  # noqa: E731
            num = numerical_gradient(f, model.params[name])
            assert rel_error(num, grads[name]) < 1e-7, name
    for name, value in model.params.items():  # restored bit for bit
        assert xs.to_numpy(value).tobytes() == before[name].tobytes(), name


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_float32_parameter_in_place_and_argument_in_float64(backend):
    """A float32 x: the lambda sees x perturbed in place; a function of its argument gets float64."""
    require_backend(backend)
    model, X, y = _problem(backend, "float32")
    seen = []

    def f(w):
        seen.append(str(w.dtype))
        return model.loss(X, y)[0]

    _, grads = model.loss(X, y)
    num = numerical_gradient(f, model.params["b2"], h=1e-3)
    assert set(seen) == {"float64" if backend == "numpy" else "torch.float64"}
    # float32 loss values differenced over a 2e-3 step: about 1e-4 relative error
    assert rel_error(num, grads["b2"]) < 2e-3
    x = xs.asarray(np.array([0.3, -1.2, 2.0]), backend=backend, dtype="float32")
    g = numerical_gradient(lambda v: (v**3).sum(), x)
    np.testing.assert_allclose(xs.to_numpy(g), 3 * xs.to_numpy(x).astype(np.float64) ** 2, rtol=1e-8)


def test_restored_when_f_raises():
    x = RNG.standard_normal((2, 3))
    saved = x.copy()
    calls = []

    def f(_):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("boom")
        return float(np.sum(x**2))

    with pytest.raises(RuntimeError, match="boom"):
        numerical_gradient(f, x)
    assert x.tobytes() == saved.tobytes()


def test_torch_tensor_that_requires_grad():
    torch = pytest.importorskip("torch")
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    g = numerical_gradient(lambda _: (w.detach() ** 2).sum(), w)
    np.testing.assert_allclose(g.numpy(), 2 * w.detach().numpy(), rtol=1e-8)
    assert w.requires_grad and w.grad is None
    assert w.detach().tolist() == [1.0, -2.0, 0.5]


def test_tiny_h_against_a_large_value_still_moves_x():
    """h below half an ulp of x_i would store x_i itself: the step widens instead of dividing 0 by 2h."""
    x = np.array([3.0e4], dtype=np.float32)  # ulp = 2**-9 ≈ 2e-3 > h
    g = numerical_gradient(lambda v: (v * 2.0).sum(), x, h=1e-5)
    np.testing.assert_allclose(xs.to_numpy(g), [2.0], rtol=1e-12)
    assert x[0] == np.float32(3.0e4)


@pytest.mark.parametrize("backend", ["jax", "array_api_strict"])
def test_immutable_backends_warn_and_name_the_cause(backend):
    require_backend(backend)
    model, X, y = _problem(backend)
    with pytest.warns(NotInPlaceWarning, match=f"{backend} arrays cannot be changed in place"):
        with pytest.warns(ZeroGradientWarning, match="f must compute from its argument"):
            num = numerical_gradient(lambda _: model.loss(X, y)[0], model.params["W1"])
    assert not np.any(xs.to_numpy(num))
    # The remedy the warning names: a function of its argument.
    _, grads = model.loss(X, y)

    def f(w):
        saved, model.params["W1"] = model.params["W1"], w
        try:
            return model.loss(X, y)[0]
        finally:
            model.params["W1"] = saved

    with pytest.warns(NotInPlaceWarning) as record:
        num = numerical_gradient(f, model.params["W1"])
    assert not [w for w in record if w.category is ZeroGradientWarning]
    assert rel_error(num, grads["W1"]) < 1e-7


def test_zero_gradient_from_a_copy_is_named():
    """NumPy writes in place, but f reads another array: the gradient is 0 and the warning says why."""
    x = RNG.standard_normal(4)
    copy = x.copy()
    with pytest.warns(ZeroGradientWarning, match="f does not read x"):
        numerical_gradient(lambda _: float(np.sum(copy**2)), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        numerical_gradient(lambda v: np.sum(v * 0.0), x)  # f is 0 everywhere: a true zero, no warning


# ---------------------------------------------------------------- rmsprop


def test_rmsprop_against_hand_computed_steps():
    """CS231n's rule: cache = ρ·cache + (1−ρ)·dw², w −= lr·dw/(√cache + ε); defaults ρ = 0.99, ε = 1e-8."""
    w = np.array([1.0, -2.0, 0.5])
    dw1, dw2 = np.array([0.1, -0.2, 0.0]), np.array([0.3, 0.1, -0.4])
    w1, config = train.rmsprop(w, dw1, {"learning_rate": 0.01})
    assert config["decay_rate"] == 0.99 and config["epsilon"] == 1e-8
    cache1 = np.array([0.01 * 0.01, 0.01 * 0.04, 0.0])
    np.testing.assert_allclose(config["cache"], cache1, rtol=1e-13)
    np.testing.assert_allclose(w1, [1.0 - 0.01 * 0.1 / (0.01 + 1e-8), -2.0 + 0.01 * 0.2 / (0.02 + 1e-8), 0.5],
                               rtol=1e-14)
    w2, config = train.rmsprop(w1, dw2, config)
    cache2 = 0.99 * cache1 + 0.01 * dw2**2
    np.testing.assert_allclose(config["cache"], cache2, rtol=1e-14)
    np.testing.assert_allclose(w2, w1 - 0.01 * dw2 / (np.sqrt(cache2) + 1e-8), rtol=1e-14)
    assert w.tolist() == [1.0, -2.0, 0.5]  # not updated in place
    assert train.UPDATE_RULES["rmsprop"] is train.rmsprop


def test_rmsprop_matches_cs231n_reference_values():
    """Assignment 2's check: N, D = 4, 5; its expected next_w and cache."""
    N, D = 4, 5
    w = np.linspace(-0.4, 0.6, num=N * D).reshape(N, D)
    dw = np.linspace(-0.6, 0.4, num=N * D).reshape(N, D)
    cache = np.linspace(0.6, 0.9, num=N * D).reshape(N, D)
    next_w, config = train.rmsprop(w, dw, {"learning_rate": 1e-2, "cache": cache})
    expected_next_w = np.asarray([
        [-0.39223849, -0.34037513, -0.28849239, -0.23659121, -0.18467247],
        [-0.132737, -0.08078555, -0.02881884, 0.02316247, 0.07515774],
        [0.12716641, 0.17918792, 0.23122175, 0.28326742, 0.33532447],
        [0.38739248, 0.43947102, 0.49155973, 0.54365823, 0.59576619]])
    expected_cache = np.asarray([
        [0.5976, 0.6126277, 0.6277108, 0.64284931, 0.65804321],
        [0.67329252, 0.68859723, 0.70395734, 0.71937285, 0.73484377],
        [0.75037008, 0.7659518, 0.78158892, 0.79728144, 0.81302936],
        [0.82883269, 0.84469141, 0.86060554, 0.87657507, 0.8926]])
    assert rel_error(next_w, expected_next_w) < 1e-7
    assert rel_error(config["cache"], expected_cache) < 1e-7


# ---------------------------------------------------------------- constructors


def test_constructor_defaults_are_cs231ns():
    net = TwoLayerNet(seed=0)
    assert {k: tuple(v.shape) for k, v in net.params.items()} == {
        "W1": (3072, 100), "b1": (100,), "W2": (100, 10), "b2": (10,)}
    assert net.reg == 0.0
    assert abs(float(np.std(net.params["W1"])) - 1e-3) < 5e-5
    fc = FullyConnectedNet([100, 50], seed=0)
    assert [tuple(fc.params[f"W{i}"].shape) for i in (1, 2, 3)] == [(3072, 100), (100, 50), (50, 10)]
    assert fc.reg == 0.0
    assert abs(float(np.std(fc.params["W1"])) - 1e-2) < 5e-4
    # CS231n's positional order: hidden_dims, input_dim, num_classes, dropout_keep_ratio,
    # normalization, reg, weight_scale, dtype, seed
    positional = FullyConnectedNet([4], 6, 3, 1, None, 0.5, 0.1, np.float64, 2)
    assert positional.reg == 0.5 and positional.params["W1"].dtype == np.float64
    assert tuple(positional.params["W1"].shape) == (6, 4)
    # TwoLayerNet(input_dim, hidden_dim, num_classes, weight_scale, reg)
    two = TwoLayerNet(6, 4, 3, 0.1, 0.25)
    assert two.reg == 0.25 and tuple(two.params["W2"].shape) == (4, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(dropout_keep_ratio=0.5), r"dropout_keep_ratio must be 1 \(xsoftmax has no dropout layer\), "
                                   r"got 0.5"),
    (dict(normalization="batchnorm"), "normalization must be None .*got 'batchnorm'"),
])
def test_unsupported_cs231n_layers_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FullyConnectedNet([4], input_dim=3, num_classes=2, **kwargs)


def test_dataset_reads_like_cs231ns_data_dict():
    data = datasets.spiral(10, 3, seed=0)
    assert list(data.keys()) == ["X_train", "y_train", "X_val", "y_val"]
    assert data["X_val"] is data.X_val
    assert [k for k, _ in data.items()] == list(data.keys())
    with pytest.raises(KeyError, match="X_test"):
        data["X_test"]


# ---------------------------------------------------------------- Solver


def _solver(tmp_path=None, **kw):
    data = datasets.spiral(20, 3, seed=0, dtype="float64")
    model = TwoLayerNet(2, 16, 3, weight_scale=0.1, reg=1e-3, dtype="float64", seed=0)
    options = dict(update_rule="rmsprop", optim_config={"learning_rate": 1e-2}, batch_size=25, num_epochs=3,
                   verbose=False)
    options.update(kw)
    return train.Solver(model, data, **options), model, data


def test_histories_start_with_the_untrained_accuracy():
    solver, model, data = _solver()
    untrained = (solver.check_accuracy(data.X_train, data.y_train),
                 solver.check_accuracy(data.X_val, data.y_val))
    solver.train()
    assert (solver.train_acc_history[0], solver.val_acc_history[0]) == untrained
    assert len(solver.val_acc_history) == 3 + 1


def test_num_val_samples_and_check_accuracy_options():
    solver, model, data = _solver(num_train_samples=7, num_val_samples=9)
    solver.train()
    assert all(round(a * 7) == pytest.approx(a * 7, abs=1e-9) for a in solver.train_acc_history)
    assert all(round(a * 9) == pytest.approx(a * 9, abs=1e-9) for a in solver.val_acc_history)
    # batch_size only changes how predictions are made, not the answer
    whole = solver.check_accuracy(data.X_val, data.y_val)
    assert solver.check_accuracy(data.X_val, data.y_val, batch_size=7) == whole
    assert solver.check_accuracy(data.X_val, data.y_val, None, 1000) == whole
    sub = solver.check_accuracy(data.X_val, data.y_val, num_samples=10)
    assert round(sub * 10) == pytest.approx(sub * 10)
    with pytest.raises(ValueError, match="num_samples"):
        solver.check_accuracy(data.X_val, data.y_val, num_samples=0)


def test_checkpoint_each_epoch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    solver, model, _ = _solver(checkpoint_name="twolayer")
    solver.train()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"twolayer_epoch_{e}.pkl" for e in (1, 2, 3)]
    with open(tmp_path / "twolayer_epoch_2.pkl", "rb") as fh:
        checkpoint = pickle.load(fh)
    assert checkpoint["epoch"] == 2
    assert checkpoint["update_rule"] == "rmsprop"
    assert checkpoint["loss_history"] == solver.loss_history[: 2 * 3]
    assert checkpoint["val_acc_history"] == solver.val_acc_history[:3]
    assert isinstance(checkpoint["model"], TwoLayerNet)
    assert set(checkpoint["model"].params) == {"W1", "b1", "W2", "b2"}
    with pytest.raises(TypeError, match="checkpoint_name"):
        _solver(checkpoint_name=3)


def test_print_every_counts_iterations():
    out = io.StringIO()
    solver, _, _ = _solver(verbose=True, stream=out, print_every=2, num_epochs=2)
    solver.train()
    iterations = [line.split(")")[0] for line in out.getvalue().splitlines() if line.startswith("(Iteration")]
    assert iterations == ["(Iteration 1 / 6", "(Iteration 3 / 6", "(Iteration 5 / 6"]


def test_verbose_prints_each_entry_as_cs231n_does(capsys):
    x = np.array([[1.0, 2.0]])
    g = numerical_gradient(lambda _: float(np.sum(x**2)), x, verbose=False, h=1e-5)
    assert capsys.readouterr().out == ""
    numerical_gradient(lambda _: float(np.sum(x**2)), x, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(")")[0] + ")" for line in lines] == ["(0, 0)", "(0, 1)"]
    assert [float(line.split(")")[1]) for line in lines] == pytest.approx(xs.to_numpy(g).ravel().tolist())


def test_read_only_numpy_array_is_differenced_out_of_place():
    x = np.array([1.0, -2.0])
    x.flags.writeable = False
    with pytest.warns(NotInPlaceWarning, match="x is read-only and cannot be changed in place"):
        g = numerical_gradient(lambda v: np.sum(v**2), x)
    np.testing.assert_allclose(g, [2.0, -4.0], rtol=1e-8)
