"""Update rules against hand-written NumPy steps on every backend; the Solver's loop,
history, decay, best parameters, progress, and cross-backend reproducibility."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import require_backend

import xsoftmax as xs
from xsoftmax import datasets, train
from xsoftmax._backend import backend_name
from xsoftmax.nets import TwoLayerNet

from _helpers import assert_close, on

RNG = np.random.default_rng(2)
W = RNG.standard_normal((4, 3))
DW1, DW2 = RNG.standard_normal((4, 3)), RNG.standard_normal((4, 3))


def _two_steps(xp, rule, config):
    w = on(xp, W, dtype=xp.float64)
    w1, config = rule(w, on(xp, DW1, dtype=xp.float64), config)
    w2, config = rule(w1, on(xp, DW2, dtype=xp.float64), config)
    assert_close(w, W, xp)  # the input is never modified
    return w1, w2, config


def test_sgd(xp):
    w1, w2, config = _two_steps(xp, train.sgd, {"learning_rate": 0.1})
    assert_close(w1, W - 0.1 * DW1, xp, dtype=xp.float64)
    assert_close(w2, W - 0.1 * DW1 - 0.1 * DW2, xp, dtype=xp.float64)


def test_sgd_momentum(xp):
    w1, w2, config = _two_steps(xp, train.sgd_momentum, {"learning_rate": 0.1, "momentum": 0.8})
    v1 = -0.1 * DW1
    v2 = 0.8 * v1 - 0.1 * DW2
    assert_close(w1, W + v1, xp, dtype=xp.float64)
    assert_close(w2, W + v1 + v2, xp, dtype=xp.float64)
    assert_close(config["velocity"], v2, xp)


def test_adam(xp):
    w1, w2, config = _two_steps(xp, train.adam, {"learning_rate": 0.05})
    w, m, v = W.copy(), np.zeros_like(W), np.zeros_like(W)
    expected = []
    for t, dw in enumerate((DW1, DW2), start=1):
        m = 0.9 * m + 0.1 * dw
        v = 0.999 * v + 0.001 * dw**2
        w = w - 0.05 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        expected.append(w)
    assert_close(w1, expected[0], xp, dtype=xp.float64)
    assert_close(w2, expected[1], xp, dtype=xp.float64)
    assert config["t"] == 2
    assert_close(config["m"], m, xp)
    assert_close(config["v"], v, xp)


def test_adam_first_step_moves_every_weight_by_lr():
    """Bias correction makes Adam's first step ``lr · sign(dw)`` whatever the gradient's scale."""
    w1, _ = train.adam(W, 1e-3 * DW1, {"learning_rate": 0.01})
    np.testing.assert_allclose(W - w1, 0.01 * np.sign(DW1), rtol=1e-3)


def _tiny(backend="numpy", dtype="float64", **solver_kw):
    data = datasets.spiral(20, 3, seed=0, backend=backend, dtype=dtype)
    model = TwoLayerNet(2, 16, 3, weight_scale=0.1, reg=1e-3, backend=backend, dtype=dtype, seed=0)
    kw = dict(
        update_rule="adam", optim_config={"learning_rate": 0.1}, batch_size=25, num_epochs=8, verbose=False
    )
    kw.update(solver_kw)
    return train.Solver(model, data, **kw), data


def test_solver_learns_and_records_history():
    solver, data = _tiny(num_epochs=30)
    solver.train()
    # 60 rows in batches of 25: 3 steps per epoch, the last one of 10 rows.
    assert len(solver.loss_history) == 30 * 3
    # CS231n's histories: the untrained model's accuracy, then one per epoch.
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 31
    assert abs(solver.loss_history[0] - np.log(3)) < 0.1
    assert solver.loss_history[-1] < 0.7 * solver.loss_history[0]
    assert solver.train_acc_history[-1] > 0.6  # chance is 1/3
    # The model ends with the parameters of the best validation epoch.
    assert solver.best_val_acc == max(solver.val_acc_history)
    last_best = max(e for e, a in enumerate(solver.val_acc_history) if a == solver.best_val_acc)
    assert solver.best_epoch == last_best  # ties go to the later, longer-trained epoch
    assert solver.check_accuracy(data.X_val, data.y_val) == solver.best_val_acc
    assert all(solver.model.params[k] is solver.best_params[k] for k in solver.best_params)


def test_best_params_are_a_snapshot():
    """Later updates must not change the kept parameters (no in-place updates)."""
    solver, data = _tiny(num_epochs=1)
    solver.train()
    kept = {k: xs.to_numpy(v).copy() for k, v in solver.best_params.items()}
    before = dict(solver.best_params)
    solver._step(data.X_train, data.y_train)
    assert not np.array_equal(xs.to_numpy(solver.model.params["W1"]), kept["W1"])
    for k in kept:
        np.testing.assert_array_equal(xs.to_numpy(before[k]), kept[k])


def test_lr_decay_per_epoch():
    solver, _ = _tiny(lr_decay=0.5, num_epochs=3)
    solver.train()
    for config in solver.optim_configs.values():
        assert config["learning_rate"] == pytest.approx(0.1 * 0.5**3)


def test_full_batch_matches_gather_path():
    """batch_size ≥ N skips the gather; a permutation of all rows gives the same step."""
    full, _ = _tiny(batch_size=60, num_epochs=3)
    large, _ = _tiny(batch_size=1000, num_epochs=3)
    full.train(), large.train()
    np.testing.assert_allclose(full.loss_history, large.loss_history, rtol=1e-12)
    assert len(full.loss_history) == 3


def test_custom_rule_and_train_subset():
    calls = []

    def frozen(w, dw, config):
        calls.append(1)
        return w, config

    solver, _ = _tiny(update_rule=frozen, num_epochs=2, num_train_samples=10)
    solver.train()
    assert len(calls) == 2 * 3 * 4  # epochs × steps × params
    assert len(set(solver.loss_history)) > 1  # different minibatches, same weights
    # accuracy on a 10-row subset is a multiple of 1/10
    assert all(round(a * 10, 9) == int(round(a * 10)) for a in solver.train_acc_history)


def test_progress_display():
    """CS231n's lines: a loss line every print_every iterations, an accuracy line per epoch."""
    out = io.StringIO()
    solver, _ = _tiny(verbose=True, stream=out, num_epochs=4, print_every=5)
    solver.train()
    lines = out.getvalue().splitlines()
    # 4 epochs × 3 steps = 12 iterations: loss lines at iterations 1, 6 and 11.
    iterations = [line for line in lines if line.startswith("(Iteration")]
    assert [line.split(")")[0] for line in iterations] == ["(Iteration 1 / 12", "(Iteration 6 / 12",
                                                          "(Iteration 11 / 12"]
    assert iterations[0].split("loss: ")[1] == f"{solver.loss_history[0]:f}"
    epochs = [line for line in lines if line.startswith("(Epoch")]
    assert [line.split(")")[0] for line in epochs] == [f"(Epoch {e} / 4" for e in range(5)]
    assert f"val_acc: {solver.val_acc_history[-1]:f}" in epochs[-1]
    thinned = io.StringIO()
    _tiny(verbose=True, stream=thinned, num_epochs=5, print_every=100, print_epoch_every=2)[0].train()
    assert [line.split(")")[0] for line in thinned.getvalue().splitlines() if "Epoch" in line] == [
        "(Epoch 0 / 5", "(Epoch 2 / 5", "(Epoch 4 / 5", "(Epoch 5 / 5"]
    quiet = io.StringIO()
    _tiny(verbose=False, stream=quiet)[0].train()
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(update_rule="rmsprop2"), "update_rule must be one of"),
        (dict(print_every=0), "print_every"),
        (dict(num_val_samples=0), "num_val_samples"),
        (dict(batch_size=0), "batch_size"),
        (dict(num_epochs=1.5), "num_epochs"),
        (dict(lr_decay=0.0), "lr_decay"),
    ],
)
def test_bad_solver_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**kwargs)


def test_missing_data_field():
    model = TwoLayerNet(2, 4, 3, seed=0)
    with pytest.raises(ValueError, match="X_val"):
        train.Solver(model, {"X_train": 0, "y_train": 0, "y_val": 0})


@pytest.mark.parametrize("rule", sorted(train.UPDATE_RULES))
def test_same_seed_same_numbers_on_every_backend(xp, rule):
    """Data, weights and batch order all come from host generators: every backend
    follows the NumPy run up to float64 rounding."""
    lr = {"sgd": 0.5, "sgd_momentum": 0.2, "adam": 5e-2, "rmsprop": 1e-2}[rule]
    kw = dict(update_rule=rule, optim_config={"learning_rate": lr}, num_epochs=2)
    ref, _ = _tiny(**kw)
    here, _ = _tiny(backend=backend_name(xp), **kw)
    ref.train(), here.train()
    np.testing.assert_allclose(here.loss_history, ref.loss_history, rtol=1e-9)
    assert here.val_acc_history == ref.val_acc_history
    for k, v in here.model.params.items():
        assert_close(v, xs.to_numpy(ref.model.params[k]), xp, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("backend", ["array_api_strict", "torch"])
def test_float32_spiral_run_agrees_with_numpy(backend):
    """The CLI's float32 setting: a longer run still agrees to float32 tolerance."""
    require_backend(backend)

    def run(b):
        data = datasets.spiral(seed=0, backend=b)
        model = TwoLayerNet(2, 100, 3, reg=1e-4, backend=b, seed=0)
        solver = train.Solver(model, data, update_rule="adam", optim_config={"learning_rate": 2e-2},
                              batch_size=300, num_epochs=60, verbose=False)
        return solver.train()

    ref, here = run("numpy"), run(backend)
    np.testing.assert_allclose(here.loss_history, ref.loss_history, rtol=2e-3)
    np.testing.assert_allclose(here.val_acc_history, ref.val_acc_history, atol=0.02)
