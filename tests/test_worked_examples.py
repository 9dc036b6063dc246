"""The worked examples of docs/math.md, with the numbers written out by hand.

Each example is small enough to check on paper; the expected values below are
not computed by any code, only typed in.
"""

from __future__ import annotations

import math

import numpy as np

import xsoftmax as xs

from _helpers import assert_close, on

#: Logits whose softmax is exactly p = [0.2, 0.3, 0.5] (softmax(log p) = p).
P = np.array([0.2, 0.3, 0.5])
LOGITS = np.log(P)


def test_middle_class_correct(xp):
    """p = [0.2, 0.3, 0.5], y = 1: dscores = p − onehot = [0.2, −0.7, 0.5]; loss = −log 0.3."""
    loss, d = xs.softmax_loss(on(xp, [LOGITS]), on(xp, [1]))
    assert_close(d, [[0.2, -0.7, 0.5]], xp)
    assert_close(loss, -math.log(0.3), xp)  # 1.2039728...
    assert_close(loss, 1.2039728043259361, xp)


def test_two_rows_carry_one_over_n(xp):
    """With N = 2 the same row's gradient is halved: the 1/N of the mean."""
    logits = np.stack([LOGITS, LOGITS])
    loss, d = xs.softmax_loss(on(xp, logits), on(xp, [1, 1]))
    assert_close(d, [[0.1, -0.35, 0.25], [0.1, -0.35, 0.25]], xp)
    assert_close(loss, -math.log(0.3), xp)  # mean of two equal rows
    loss, d = xs.softmax_loss(on(xp, logits), on(xp, [1, 1]), reduction="sum")
    assert_close(d, [[0.2, -0.7, 0.5], [0.2, -0.7, 0.5]], xp)  # "sum": no 1/N
    assert_close(loss, -2 * math.log(0.3), xp)


def test_shift_invariance(xp):
    """Adding a constant to every logit of a row changes neither loss nor gradient."""
    for shift in (0.0, 1.0, -30.0, 1000.0):
        loss, d = xs.softmax_loss(on(xp, [LOGITS + shift]), on(xp, [1]))
        assert_close(d, [[0.2, -0.7, 0.5]], xp, rtol=1e-9, atol=1e-12)
        assert_close(loss, -math.log(0.3), xp, rtol=1e-9)


def test_label_smoothing_target(xp):
    """ε = 0.1, C = 3, y = 1: target q = 0.9·[0, 1, 0] + 0.1/3 = [1/30, 28/30, 1/30].

    The gradient is p − q = [0.2 − 1/30, 0.3 − 28/30, 0.5 − 1/30] and the
    loss is −Σ q_k log p_k.
    """
    q = np.array([1 / 30, 28 / 30, 1 / 30])
    loss, d = xs.softmax_loss(on(xp, [LOGITS]), on(xp, [1]), label_smoothing=0.1)
    assert_close(d, [[0.2 - 1 / 30, 0.3 - 28 / 30, 0.5 - 1 / 30]], xp)
    assert_close(d, [[0.16666666666666669, -0.6333333333333333, 0.4666666666666667]], xp)
    expected = -(q[0] * math.log(0.2) + q[1] * math.log(0.3) + q[2] * math.log(0.5))
    assert_close(loss, expected, xp)


def test_weighted_mean_by_hand(xp):
    """weight = [1, 2, 3]; rows y = 1 and y = 2, both with p = [0.2, 0.3, 0.5].

    "mean" divides by Σ w_{y_i} = 2 + 3 = 5 (not by N = 2):

    - loss = (2·(−log 0.3) + 3·(−log 0.5)) / 5
    - row 0: 2·(p − e_1) / 5 = [0.08, −0.28, 0.2]
    - row 1: 3·(p − e_2) / 5 = [0.12, 0.18, −0.3]
    """
    logits = np.stack([LOGITS, LOGITS])
    loss, d = xs.softmax_loss(on(xp, logits), on(xp, [1, 2]), weight=on(xp, [1.0, 2.0, 3.0]))
    assert_close(loss, (2 * -math.log(0.3) + 3 * -math.log(0.5)) / 5, xp)
    assert_close(d, [[0.08, -0.28, 0.2], [0.12, 0.18, -0.3]], xp)


def test_ignored_row_has_zero_gradient(xp):
    """Row 1 is ignored: it adds nothing to the loss, gets a zero gradient, and N counts 1 row."""
    logits = np.stack([LOGITS, np.array([5.0, -2.0, 0.5])])
    loss, d = xs.softmax_loss(on(xp, logits), on(xp, [1, -100]), ignore_index=-100)
    assert_close(d, [[0.2, -0.7, 0.5], [0.0, 0.0, 0.0]], xp)
    assert_close(loss, -math.log(0.3), xp)
