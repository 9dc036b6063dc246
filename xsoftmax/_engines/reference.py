r"""The reference engine: generic Array API code for every backend, readable rather than fast.

Only functions of the Python Array API standard are used, with no in-place
updates and no Python branching on array values, so it runs unchanged on
NumPy, CuPy, PyTorch, JAX (also under ``jax.jit``), Dask (lazily) and
array-api-strict. The fused engines are checked against it.

Stability. For a row ``s`` with maximum ``m``,

.. math::  \operatorname{lse}(s) = \log Σ_k e^{s_k} = m + \log Σ_k e^{s_k − m},

and every ``s_k − m ≤ 0``, so no exponential overflows and the largest one is
exactly 1. The loss of a row is ``lse(s) − s_y`` computed as
``log Σ e^{s_k − m} − (s_y − m)``, never as ``−log(softmax(s)_y)``: that
would round ``p_y`` to 0 and return ``inf`` for logits a few hundred apart.
A maximum that is not finite (a row of ``−inf``, a masked-out row) is
replaced by 0 before shifting (:func:`shifted`), so such a row gives
``exp(−inf) = 0`` instead of ``−inf − (−inf) = NaN``.
"""

from __future__ import annotations

from .._backend import device, scalar_like
from .._dtypes import narrow, widen
from .._reduction import (
    LossInputs,
    is_probability,
    mixed_weights,
    probability_c,
    probability_rows,
    reduce_loss,
    row_coefficients,
    row_loss,
    softcap_factor,
    z_rows,
)
from .._typing import Array, ArrayNamespace
from .._validate import bad_labels

__all__ = ["one_hot", "shifted", "softmax_loss"]


def shifted(xp: ArrayNamespace, x: Array, axis: int) -> tuple[Array, Array]:
    """``(x − m, m)`` with ``m`` the max along ``axis`` (kept), reset to 0 if not finite."""
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, scalar_like(xp, 0.0, m))
    return x - m, m


def one_hot(xp: ArrayNamespace, y: Array, num_classes: int) -> Array:
    """Boolean ``(N, C)`` mask with ``mask[i, k] = (y_i == k)``.

    The portable replacement for ``d[range(N), y] -= 1``, which needs
    in-place fancy indexing that JAX, Dask and the standard do not have.
    Labels outside ``[0, C)`` (ignored rows) give an all-False row.
    """
    classes = xp.arange(num_classes, dtype=y.dtype, device=device(y))
    # y[:, None] rather than expand_dims: it also works for Dask arrays of
    # unknown length (after boolean filtering), where expand_dims reshapes.
    return y[:, None] == classes


def _col(v: Array) -> Array:
    """A per-row vector as a column; a 0-d coefficient (the same for all rows) as itself."""
    return v[:, None] if v.ndim else v


def _target_logits(xp: ArrayNamespace, z: Array, y: Array, hot: Array, backend: str) -> Array:
    """``t_i = z_{i,y_i}``: gathered where the namespace can (one read of N values, not of N × C).

    Ignored or (traced) bad labels are clipped into range: their rows are masked later.
    Dask has no ``take_along_axis``; there the masked row sum gives the same values.
    """
    if backend == "dask" or not hasattr(xp, "take_along_axis"):
        return xp.sum(xp.where(hot, z, scalar_like(xp, 0.0, z)), axis=1)
    k = xp.clip(y, 0, z.shape[1] - 1) if z.shape[1] else y
    return xp.take_along_axis(z, k[:, None], axis=1)[:, 0]


def softmax_loss(inputs: LossInputs, /, *, out: Array | None = None) -> tuple[Array, Array]:
    r"""The generic engine: several array passes, readable rather than fast.

    With ``z = c tanh(s/c)`` under ``softcap=c`` (else ``z = s``), shifted by
    the row max ``m``: ``l = log Σ_k e^{z_k − m}``, ``p = e^{z − m} / Σ e^{z − m}``,
    ``t = z_y − m``, ``u = Σ_k w_k (z_k − m)``; for probability targets ``q``
    also ``Q = Σ_k w_k q_k`` and ``uq = Σ_k w_k q_k (z_k − m)``. The rows' loss
    comes from :func:`xsoftmax._reduction.row_loss` (and :func:`~xsoftmax._reduction.z_rows`
    with ``lse = m + l``), the gradient is

    .. math::  ∂\text{loss}/∂s_{ik} = [(c_i + zc_i\,lse_i) p_{ik} − a_i T_{ik} − b_i w_k]\, g_{ik},

    ``T_ik = 1[k = y_i]`` (labels) or ``w_k q_ik`` (probabilities, ``c_i = a Q_i + b W``),
    ``g = 1 − tanh²(s/c)`` under softcap (else no multiply at all):
    ``(p − onehot(y)) / N`` in the plain case, the "−1" of CS231n's
    ``dscores[range(N), y] -= 1``.
    """
    xp, y = inputs.xp, inputs.y
    s = widen(xp, inputs.scores)
    c = s.shape[1]
    w = None if inputs.weight is None else xp.astype(inputs.weight, s.dtype)
    cap = inputs.softcap
    capped = s if cap is None else cap * xp.tanh(s / cap)
    z, m = shifted(xp, capped, 1)
    e = xp.exp(z)
    se = xp.sum(e, axis=1)
    l = xp.log(se)  # noqa: E741 (the l of the docstring)
    zero = scalar_like(xp, 0.0, z)
    coef = row_coefficients(inputs._replace(weight=w), s.dtype)
    if is_probability(inputs):
        q = xp.astype(y, s.dtype)
        wq = q * w if w is not None else q
        q_sum = xp.sum(wq, axis=1)
        # 0 · (−inf) = NaN where q' = 0 at a −inf logit: torch's −Σ w q' log_softmax does the same.
        uq = xp.sum(mixed_weights(coef, wq, w) * z, axis=1)
        rows = probability_rows(xp, coef, l, q_sum, uq)
        pc = probability_c(coef, q_sum)
        target = _col(coef.a) * wq
    else:
        u = None
        if inputs.label_smoothing:
            u = xp.sum(z * w, axis=1) if w is not None else xp.sum(z, axis=1)
        hot = one_hot(xp, y, c)
        rows = row_loss(xp, coef, l, _target_logits(xp, z, y, hot, inputs.backend), u)
        pc = coef.c
        target = xp.where(hot, _col(coef.a), zero)
    zrows = None
    if coef.zc is not None:
        lse = m[:, 0] + l
        zrows = z_rows(xp, coef, lse)
        pc = pc + coef.zc * lse
    d = e * _col(pc / se) - target  # p = e / σ: one factor per row, not a division per element
    if coef.b is not None:
        d = d - _col(coef.b) * (w if w is not None else scalar_like(xp, 1.0, z))
    if cap is not None:
        d = d * softcap_factor(xp, capped, cap)
    if inputs.labels_unchecked:
        # Traced JAX labels cannot raise; a bad label poisons its row with NaN.
        bad = bad_labels(y, c, inputs.ignore_index)
        nan = scalar_like(xp, float("nan"), z)
        rows = xp.where(bad, nan, rows)
        d = xp.where(bad[:, None], nan, d)
    loss = reduce_loss(xp, coef, rows, inputs.reduction, zrows=zrows)
    dtype = inputs.scores.dtype
    loss, d = narrow(xp, loss, dtype), narrow(xp, d, dtype)
    if out is not None:
        out[...] = d
        d = out
    return loss, d
