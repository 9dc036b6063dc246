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
    loss is −Σ q_k log p_k = 0.9·(−log 0.3) + (0.1/3)·(−log 0.2 − log 0.3 − log 0.5).
    """
    loss, d = xs.softmax_loss(on(xp, [LOGITS]), on(xp, [1]), label_smoothing=0.1)
    assert_close(d, [[0.2 - 1 / 30, 0.3 - 28 / 30, 0.5 - 1 / 30]], xp)
    assert_close(d, [[0.1666667, -0.6333333, 0.4666667]], xp, rtol=0, atol=1e-7)
    expected = 0.9 * -math.log(0.3) + (0.1 / 3) * -(math.log(0.2) + math.log(0.3) + math.log(0.5))
    assert_close(loss, expected, xp)
    assert_close(loss, 1.2004608, xp, rtol=0, atol=1e-7)  # docs/math.md


def test_weighted_mean_by_hand(xp):
    """docs/math.md: rows y = [1, 2], both p = [0.2, 0.3, 0.5], w = [1, 2, 1].

    w_y = [2, 1], so "mean" divides by D = 3 (not by N = 2):

    - loss = (2·(−log 0.3) + 1·(−log 0.5)) / 3 = 1.0336976
    - row 0: (2/3)·(p − e_1) = [0.1333, −0.4667, 0.3333]
    - row 1: (1/3)·(p − e_2) = [0.0667, 0.1, −0.1667]
    """
    logits = np.stack([LOGITS, LOGITS])
    loss, d = xs.softmax_loss(on(xp, logits), on(xp, [1, 2]), weight=on(xp, [1.0, 2.0, 1.0]))
    assert_close(loss, (2 * -math.log(0.3) + 1 * -math.log(0.5)) / 3, xp)
    assert_close(loss, 1.0336976, xp, rtol=0, atol=1e-7)
    assert_close(d, [[2 / 3 * 0.2, 2 / 3 * -0.7, 2 / 3 * 0.5], [1 / 3 * 0.2, 1 / 3 * 0.3, 1 / 3 * -0.5]], xp)
    assert_close(d, [[0.1333333, -0.4666667, 0.3333333], [0.0666667, 0.1, -0.1666667]], xp, rtol=0, atol=1e-7)


def test_weighted_mean_other_weights(xp):
    """w = [1, 2, 3], y = [1, 2]: D = 2 + 3 = 5; rows (2/5)(p − e_1) and (3/5)(p − e_2)."""
    logits = np.stack([LOGITS, LOGITS])
    loss, d = xs.softmax_loss(on(xp, logits), on(xp, [1, 2]), weight=on(xp, [1.0, 2.0, 3.0]))
    assert_close(loss, (2 * -math.log(0.3) + 3 * -math.log(0.5)) / 5, xp)
    assert_close(d, [[0.08, -0.28, 0.2], [0.12, 0.18, -0.3]], xp)


def test_ignored_row_has_zero_gradient(xp):
    """docs/math.md: the same two rows (y = [1, 2]) with ignore_index=2.

    Row 1 is ignored: it adds nothing to the loss, gets a zero gradient, and
    the mean counts one row (D = 1).
    """
    logits = np.stack([LOGITS, LOGITS])
    loss, d = xs.softmax_loss(on(xp, logits), on(xp, [1, 2]), ignore_index=2)
    assert_close(d, [[0.2, -0.7, 0.5], [0.0, 0.0, 0.0]], xp)
    assert_close(loss, 1.2039728, xp, rtol=0, atol=1e-7)


def test_ignored_row_with_minus_100(xp):
    """An ignored row's own logits do not matter, however large."""
    logits = np.stack([LOGITS, np.array([5.0, -2.0, 1e4])])
    loss, d = xs.softmax_loss(on(xp, logits), on(xp, [1, -100]), ignore_index=-100)
    assert_close(d, [[0.2, -0.7, 0.5], [0.0, 0.0, 0.0]], xp)
    assert_close(loss, -math.log(0.3), xp)


def test_no_log_of_softmax(xp):
    """docs/math.md: logits [0, 1e4] with y = 0 give the loss 1e4, not inf."""
    loss, d = xs.softmax_loss(on(xp, [[0.0, 1e4]]), on(xp, [0]))
    assert_close(loss, 1e4, xp)
    assert_close(d, [[-1.0, 1.0]], xp)
