r"""How weights, ignored rows, label smoothing and the reduction enter the loss.

Every engine computes, per row ``i`` of the scores ``s`` (shape ``(N, C)``),
three numbers from one or two passes over the row:

* ``m_i`` the row maximum (reset to 0 when it is not finite),
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
Ignored rows have ``a = b = c = 0``: their gradient is exactly zero, even
when every row is ignored and ``D = 0`` (where the "mean" loss is ``0/0 =
NaN``, as in PyTorch).
"""

from __future__ import annotations

from typing import NamedTuple

from ._typing import Array, ArrayNamespace, DType

__all__ = ["RowCoefficients", "reduce_loss", "row_coefficients", "row_loss"]


class RowCoefficients(NamedTuple):
    """Per-row coefficients of the loss and of its gradient (all shape ``(N,)``)."""

    alpha: Array
    beta: Array | None  # None when label_smoothing == 0
    denom: Array | None  # 0-d, for reduction="mean" only
    a: Array
    b: Array | None
    c: Array
    wsum: Array | float  # W = Σ_k w_k (C when unweighted)
    valid: Array  # bool, row not ignored


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
) -> RowCoefficients:
    """The coefficients α, β, D, a, b, c of the module docstring, in ``dtype``."""
    if ignore_index is None:
        valid = xp.ones_like(y, dtype=xp.bool)  # ones_like: y may have unknown length (Dask)
    else:
        valid = y != ignore_index
    vf = xp.astype(valid, dtype)
    if weight is None:
        wy = vf
        wsum: Array | float = float(num_classes)
    else:
        w = xp.astype(weight, dtype)
        safe_y = xp.where(valid, y, xp.zeros_like(y))  # ignored labels may be out of range
        wy = xp.take(w, safe_y) * vf
        wsum = xp.sum(w)
    eps = label_smoothing
    alpha = wy * (1.0 - eps) if eps else wy
    beta = vf * (eps / num_classes) if eps else None
    if reduction == "mean":
        denom = xp.sum(wy)
        # D = 0 (every row ignored, or only zero-weight classes present):
        # ignored rows get exactly 0 and the others NaN, as in PyTorch, from
        # a safe division that raises no divide-by-zero warning.
        nonzero = denom != 0
        inv = 1.0 / xp.where(nonzero, denom, xp.ones_like(denom))
        inv = xp.where(nonzero, inv, xp.full_like(inv, float("nan")))
        scale = xp.where(valid, inv, xp.zeros_like(vf))
    else:
        denom = None
        scale = vf
    a = alpha * scale
    b = beta * scale if beta is not None else None
    c = (alpha + beta * wsum) * scale if beta is not None else a
    return RowCoefficients(alpha, beta, denom, a, b, c, wsum, valid)


def row_loss(
    xp: ArrayNamespace, coef: RowCoefficients, l: Array, t: Array, u: Array | None  # noqa: E741
) -> Array:
    """``α (l − t) + β (W l − u)``: the unnormalised loss of each row.

    Ignored rows are exactly 0 (not ``0 · inf``) whatever their logits.
    """
    rows = coef.alpha * (l - t)
    if coef.beta is not None:
        rows = rows + coef.beta * (coef.wsum * l - u)
    return xp.where(coef.valid, rows, xp.zeros_like(rows))


def reduce_loss(xp: ArrayNamespace, coef: RowCoefficients, rows: Array, reduction: str) -> Array:
    """Apply the reduction: ``Σ rows / D`` ("mean"), ``Σ rows`` ("sum"), ``rows``."""
    if reduction == "none":
        return rows
    total = xp.sum(rows)
    if reduction == "sum":
        return total
    # total / D, with D = 0 giving what IEEE division gives (NaN for 0/0, as
    # PyTorch reports an all-ignored batch; ±inf otherwise) but no
    # divide-by-zero or invalid-value warning.
    denom = coef.denom
    nonzero = denom != 0
    quotient = total / xp.where(nonzero, denom, xp.ones_like(denom))
    by_zero = xp.where(
        total > 0,
        xp.full_like(total, float("inf")),
        xp.where(total < 0, xp.full_like(total, -float("inf")), xp.full_like(total, float("nan"))),
    )
    return xp.where(nonzero, quotient, by_zero)
