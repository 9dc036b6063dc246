"""Error messages that say how to fix the mistake (issue 16, part 3), on every backend."""

from __future__ import annotations

import re

import numpy as np
import pytest

import xsoftmax as xs
from xsoftmax.nets import FullyConnectedNet, TwoLayerNet

from _helpers import on

SCORES = np.random.default_rng(3).standard_normal((4, 3))
LABELS = np.array([0, 2, 1, 2])


def test_float_labels_say_how_to_cast(xp):
    # A floating y is read as class probabilities; one of the label shape is neither.
    with pytest.raises(ValueError) as exc:
        xs.softmax_loss(on(xp, SCORES), on(xp, LABELS.astype(np.float64)))
    message = str(exc.value)
    assert message.startswith("y: a floating y holds class probabilities and must have the scores' shape (4, 3)")
    assert "got shape (4,)" in message
    assert "y.astype(np.int64)" in message and "xp.astype(y, xp.int64)" in message


def test_integer_one_hot_labels_say_argmax(xp):
    one_hot = np.eye(3, dtype=np.int64)[LABELS]
    with pytest.raises(ValueError, match=re.escape(
        "y has the scores' shape (4, 3) but an integer dtype: pass class indices of shape (4,) "
        "(one-hot rows: y.argmax(axis=1)), or cast class probabilities to a floating dtype"
    )):
        xs.softmax_loss(on(xp, SCORES), on(xp, one_hot))
    # The advice works: argmax of the one-hot rows gives the same loss as the labels,
    # and so do the one-hot rows cast to probabilities.
    fixed = xs.softmax_loss(SCORES, one_hot.argmax(axis=1))[0]
    assert float(fixed) == float(xs.softmax_loss(SCORES, LABELS)[0])
    assert np.isclose(float(xs.softmax_loss(SCORES, one_hot.astype(np.float64))[0]), float(fixed))


def test_other_2d_labels_get_no_one_hot_advice():
    with pytest.raises(ValueError) as exc:
        xs.softmax_loss(SCORES, np.zeros((4, 2), dtype=np.int64))
    assert "one-hot" not in str(exc.value)


@pytest.mark.parametrize("engine", ["cuda", "gpu", "CuPy"])
def test_device_names_as_engine_point_to_cupy_arrays(engine):
    with pytest.raises(ValueError) as exc:
        xs.softmax_loss(SCORES, LABELS, engine=engine)
    message = str(exc.value)
    expected = f"engine must be one of ('auto', 'reference', 'fused', 'fused-row'), got {engine!r}"
    assert message.startswith(expected)
    assert "the GPU (fused CUDA) engine runs when the scores are CuPy arrays" in message


def test_unknown_engine_keeps_the_short_message():
    with pytest.raises(ValueError) as exc:
        xs.softmax_loss(SCORES, LABELS, engine="fast")
    assert str(exc.value) == "engine must be one of ('auto', 'reference', 'fused', 'fused-row'), got 'fast'"


@pytest.mark.parametrize("cls", [TwoLayerNet, FullyConnectedNet])
def test_reg_passed_to_loss_points_to_the_constructor(cls):
    net = TwoLayerNet(3, 4, 3, seed=0) if cls is TwoLayerNet else FullyConnectedNet([4], 3, 3, seed=0)
    X = np.ones((2, 3), dtype=np.float32)
    y = np.array([0, 1])
    name = cls.__name__
    with pytest.raises(TypeError, match=re.escape(
        f"{name}.loss() takes no reg (got reg=0.05): set the L2 strength in the constructor, "
        f"{name}(..., reg=...), or as net.reg = ...; the penalty is 0.5*reg*sum(W**2), so CS231n "
        f"assignment 1's reg*sum(W**2) with reg=0.05 is reg=0.1 here"
    )):
        net.loss(X, y, reg=0.05)
    # The advice works: reg=0.1 here is assignment 1's 0.05·ΣW².
    net.reg = 0.1
    data_only = TwoLayerNet(3, 4, 3, seed=0).loss(X, y)[0] if cls is TwoLayerNet else \
        FullyConnectedNet([4], 3, 3, seed=0).loss(X, y)[0]
    penalty = sum(0.05 * float(np.sum(xs.to_numpy(w) ** 2)) for k, w in net.params.items() if k[0] == "W")
    assert float(net.loss(X, y)[0]) == pytest.approx(float(data_only) + penalty, rel=1e-6)
