r"""How weights, ignored rows, label smoothing and the reduction enter the loss.

Every engine computes, per row ``i`` of the scores ``s`` (shape ``(N, C)``),
three numbers from one or two passes over the row:

* ``m_i`` a shift that keeps ``exp`` in range: the row maximum (reset to 0
  when it is not finite) in the reference and CuPy engines; the loss and
  gradient do not depend on it, and the NumPy engine picks others,
* ``l_i = log Σ_k exp(s_ik − m_i)``, so ``lse_i = m_i + l_i``,
* ``t_i = s_{i,y_i} − m_i`` (the shifted target logit) and, with label
  smoothing, ``u_i = Σ_k w_k (s_ik − m_i)``.

Everything else (class weights ``w``, ``ignore_index``, smoothing ``ε`` and
the reduction) only changes per-row *coefficients*, computed here once for
all engines. With ``v_i = 1[y_i ≠ ignore_index]`` and ``W = Σ_k w_k``
(``w ≡ 1`` and ``W = C`` without weights):

.. math::

    α_i = v_i (1 − ε) w_{y_i}, \qquad β_i = v_i\, ε / C

    \text{row loss}_i = α_i (l_i − t_i) + β_i (W l_i − u_i)
                      = α_i (lse_i − s_{i,y_i}) + β_i Σ_k w_k (lse_i − s_{ik})

which is exactly ``torch.nn.functional.cross_entropy``: ``(1 − ε)`` times the
weighted NLL plus ``ε/C`` times the weighted sum of ``−log p`` over classes.
The reported loss is ``Σ_i row_loss_i / D`` with ``D = Σ_i v_i w_{y_i}`` for
``"mean"`` (``D = 1`` for ``"sum"``), or the vector of row losses for
``"none"``. Differentiating (``∂lse_i/∂s_ik = p_ik``):

.. math::

    \frac{∂\,\text{loss}}{∂ s_{ik}} = c_i\, p_{ik} − a_i 1[k = y_i] − b_i w_k,
    \quad a_i = α_i / D,\; b_i = β_i / D,\; c_i = (α_i + β_i W) / D.

Without weights or smoothing this is the familiar ``(p_ik − 1[k = y_i]) / N``.
Ignored rows have ``a = b = c = 0``: their gradient is exactly zero (for
any row with a finite maximum; a row of all ``−inf`` has no probabilities
and gives NaN, as in PyTorch), also when every row is ignored and ``D = 0``.
With ``D = 0`` the "mean" loss is NaN and the kept rows' gradient NaN, as in
PyTorch (:func:`mean_of_total`, :func:`inverse_denominator`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._backend import scalar_like
from ._typing import Array, ArrayNamespace, DType

__all__ = [
    "RowCoefficients",
    "inverse_denominator",
    "label_weights",
    "mean_of_total",
    "reduce_loss",
    "row_coefficients",
    "row_loss",
]


class RowCoefficients(NamedTuple):
    """Per-row coefficients of the loss and of its gradient (all shape ``(N,)``)."""

    alpha: Array
    beta: Array | None  # None when label_smoothing == 0
    denom: Array | None  # 0-d, for reduction="mean" only
    a: Array
    b: Array | None
    c: Array
    wsum: Array | float  # W = Σ_k w_k (C when unweighted)
    valid: Array | None  # bool, row not ignored; None without ignore_index (every row counts)


def label_weights(
    xp: ArrayNamespace,
    y: Array,
    *,
    num_classes: int,
    weight: Array | None,
    ignore_index: int | None,
    dtype: DType,
) -> tuple[Array, Array]:
    """``(v, v·w_y)``: which rows count, and each row's weight ``v_i w_{y_i}``.

    ``Σ_i v_i w_{y_i}`` is the "mean" denominator ``D``; engines that see the
    labels one block at a time add it up from this, block by block.
    """
    if ignore_index is None:
        valid = xp.ones_like(y, dtype=xp.bool)  # ones_like: y may have unknown length (Dask)
    else:
        valid = y != ignore_index
    vf = xp.astype(valid, dtype)
    if weight is None:
        return valid, vf
    safe_y = xp.where(valid, y, xp.zeros_like(y))  # ignored labels may be out of range
    return valid, xp.take(xp.astype(weight, dtype), safe_y) * vf


def row_coefficients(
    xp: ArrayNamespace,
    y: Array,
    *,
    num_classes: int,
    weight: Array | None,
    ignore_index: int | None,
    label_smoothing: float,
    reduction: str,
    dtype: DType,
    denom: Array | None = None,
) -> RowCoefficients:
    """The coefficients α, β, D, a, b, c of the module docstring, in ``dtype``.

    ``denom``: for "mean" over labels ``y`` that are one block of a larger
    batch, the whole batch's ``D`` (default: ``Σ`` over ``y`` itself).
    """
    valid, wy = label_weights(
        xp, y, num_classes=num_classes, weight=weight, ignore_index=ignore_index, dtype=dtype
    )
    vf = wy if weight is None else xp.astype(valid, dtype)
    wsum: Array | float = float(num_classes) if weight is None else xp.sum(xp.astype(weight, dtype))
    eps = label_smoothing
    alpha = wy * (1.0 - eps) if eps else wy
    beta = vf * (eps / num_classes) if eps else None
    if reduction == "mean":
        denom = xp.sum(wy) if denom is None else denom
        inv = inverse_denominator(xp, denom)
        # Kept rows 1/D, ignored rows exactly 0 (also when D = 0).
        scale = inv if ignore_index is None else xp.where(valid, inv, xp.zeros_like(vf))
    else:
        denom = None
        scale = vf
    a = alpha * scale
    b = beta * scale if beta is not None else None
    c = (alpha + beta * wsum) * scale if beta is not None else a
    valid_or_none = None if ignore_index is None else valid
    return RowCoefficients(alpha, beta, denom, a, b, c, wsum, valid_or_none)


def row_loss(
    xp: ArrayNamespace,
    coef: RowCoefficients,
    l: Array,  # noqa: E741
    t: Array | None,
    u: Array | None,
) -> Array:
    """``α (l − t) + β (W l − u)``: the unnormalised loss of each row.

    ``t`` None: every ``t_i`` is 0 (the NumPy engine shifts rows by their
    target logit). Ignored rows are exactly 0 (not ``0 · inf``) whatever
    their logits.
    """
    rows = coef.alpha * (l if t is None else l - t)
    if coef.beta is not None:
        rows = rows + coef.beta * (coef.wsum * l - u)
    if coef.valid is None:
        return rows
    return xp.where(coef.valid, rows, scalar_like(xp, 0.0, rows))  # 0-d: no (N,) zeros


def reduce_loss(xp: ArrayNamespace, coef: RowCoefficients, rows: Array, reduction: str) -> Array:
    """Apply the reduction: ``Σ rows / D`` ("mean"), ``Σ rows`` ("sum"), ``rows``."""
    if reduction == "none":
        return rows
    total = xp.sum(rows)
    if isinstance(total, np.generic):  # a 0-d array, not NumPy's scalar
        total = xp.asarray(total)  # (only there: torch.asarray warns on a grad-tracking tensor)
    if reduction == "sum":
        return total
    return mean_of_total(xp, total, coef.denom)


def _safe(xp: ArrayNamespace, denom: Array) -> tuple[Array, Array]:
    nonzero = denom != 0
    return nonzero, xp.where(nonzero, denom, xp.ones_like(denom))


def mean_of_total(xp: ArrayNamespace, total: Array, denom: Array) -> Array:
    """``Σ rows / D``, or NaN when ``D = 0``, without a divide-by-zero warning.

    ``D = 0`` (every row ignored, or only zero-weight classes present) makes
    PyTorch's mean NaN: its NLL term is ``0/0`` on its own, so the loss is
    NaN even when the smoothing term is not 0. Every engine takes the "mean"
    rule from here and from :func:`inverse_denominator`.
    """
    nonzero, safe = _safe(xp, denom)
    return xp.where(nonzero, total / safe, xp.full_like(total, float("nan")))


def inverse_denominator(xp: ArrayNamespace, denom: Array) -> Array:
    """``1/D``, the kept rows' gradient scale for the "mean"; NaN when ``D = 0``.

    Ignored rows get exactly 0 instead (``row_coefficients``), also when
    ``D = 0``, as in PyTorch.
    """
    nonzero, safe = _safe(xp, denom)
    inv = 1.0 / safe
    return xp.where(nonzero, inv, xp.full_like(inv, float("nan")))
