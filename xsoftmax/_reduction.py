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

**Probability targets** (``y`` floating, of the scores' shape: row ``i`` has
a target distribution ``q_i``; :func:`is_probability`). With
``Q_i = Σ_k w_k q_ik`` and ``uq_i = Σ_k w_k q_ik (s_ik − m_i)``, both read
from the row by the engine, ``α = 1 − ε`` and ``β = ε/C`` for every row
(there is no ``ignore_index``) and ``D = N`` for "mean" (never the weights,
as in torch):

.. math::

    \text{row loss}_i = α (Q_i l_i − uq_i) + β (W l_i − u_i),\qquad
    \frac{∂\,\text{loss}}{∂ s_{ik}} = c_i p_{ik} − a\, w_k q_{ik} − b\, w_k,
    \quad c_i = a Q_i + b W

(:func:`probability_c`); ``q`` need not sum to 1.

**z-loss** ``ζ`` adds ``ζ v_i lse_i²`` to each row (unweighted); "mean"
divides this term by ``V = Σ_i v_i`` (:func:`mean_denominator` without
weights), not by ``D``. Its gradient ``2ζ v_i lse_i p_ik`` joins the ``p``
term: ``c_i → c_i + zc_i lse_i`` with ``zc_i = 2ζ v_i / V`` ("mean") or
``2ζ v_i``; :func:`z_rows` gives the rows' term and :func:`reduce_loss`
its reduction. ``lse_i = m_i + l_i`` needs the shift back.

**softcap** ``c`` replaces the scores by ``c tanh(s/c)`` before anything
above, and multiplies the finished gradient by ``1 − tanh²(s/c)``
(:func:`softcap_factor`); it changes no coefficient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ._backend import device, scalar_like
from ._typing import Array, ArrayNamespace, DType

__all__ = [
    "LossInputs",
    "RowCoefficients",
    "inverse_denominator",
    "is_probability",
    "mixed_weights",
    "mean_denominator",
    "mean_of_total",
    "probability_c",
    "probability_rows",
    "reduce_loss",
    "row_coefficients",
    "row_loss",
    "softcap_factor",
    "z_rows",
]


class LossInputs(NamedTuple):
    """Validated arguments of ``softmax_loss`` (made by ``check_loss_inputs``).

    A plain record: engines read its fields and build variants (one block of
    the rows, the labels of a chunk, the whole batch's ``D``) with ``_replace``.
    """

    xp: ArrayNamespace
    scores: Array
    y: Array
    weight: Array | None
    ignore_index: int | None
    label_smoothing: float
    reduction: str
    #: True when the labels could not be range-checked (traced JAX arrays):
    #: engines must then turn rows with bad labels into NaN.
    labels_unchecked: bool
    #: For "mean": the ``D`` of the whole batch, 0-d, when these inputs are
    #: one block of it (the Dask engine's chunks, a fused linear + loss's row
    #: chunks: :func:`mean_denominator` of all labels, once); None means
    #: "from these labels".
    denom: Array | None = None
    #: The backend's name ("numpy", "torch", ...), resolved once by the checks.
    backend: str = ""
    #: ζ of the z-loss (0: none).
    z_loss: float = 0.0
    #: c of the logit softcap (None: none).
    softcap: float | None = None
    #: For "mean" with z-loss: the whole batch's ``V`` (rows not ignored), 0-d,
    #: when these inputs are one block of it; None means "from these labels".
    zdenom: Array | None = None


class RowCoefficients(NamedTuple):
    """Coefficients of the loss and of its gradient: ``(N,)`` arrays, or 0-d
    where every row has the same value (no class weights, no ``ignore_index``)."""

    alpha: Array
    beta: Array | None  # None when label_smoothing == 0
    denom: Array | None  # 0-d, for reduction="mean" only
    a: Array
    b: Array | None
    c: Array
    wsum: Array | float  # W = Σ_k w_k (C when unweighted)
    valid: Array | None  # bool, row not ignored; None without ignore_index (every row counts)
    #: z-loss: ``ζ v_i`` (the rows' term before the reduction) and the gradient's
    #: ``zc_i`` (``2ζ v_i`` scaled as the reduction says); None without z-loss.
    zrow: Array | None = None
    zc: Array | None = None
    zdenom: Array | None = None  # V, 0-d, for reduction="mean" with z-loss


def is_probability(inputs: LossInputs) -> bool:
    """Whether ``inputs.y`` holds class probabilities (floating, the scores' shape), not labels."""
    return bool(inputs.y.ndim == 2)


def probability_c(coef: RowCoefficients, q_sum: Array) -> Array:
    """``c_i = a Q_i + b W`` of probability targets, from ``Q_i = Σ_k w_k q_ik``."""
    c = coef.a * q_sum
    return c if coef.b is None else c + coef.b * coef.wsum


def probability_rows(
    xp: ArrayNamespace, coef: RowCoefficients, l: Array, q_sum: Array, uq_mixed: Array  # noqa: E741
) -> Array:
    """Probability rows ``Q'_i l_i − uq'_i``, from ``Q_i`` and ``uq'_i = Σ_k w_k q'_ik (z_ik − m_i)``.

    ``q' = (1 − ε) q + ε/C`` is mixed *before* the product with ``z − m``, as
    torch mixes it: ``α (Q l − uq) + β (W l − u)`` is the same number except
    where ``q = 0`` at a ``−inf`` logit under smoothing (``0 · inf = NaN``
    there, ``+inf`` in torch). ``Q' = α Q + β W``. Engines form ``uq'`` with
    the mixed weights ``w_k (α q_ik + β)`` (:func:`mixed_weights`).
    """
    q_mixed = probability_c(coef._replace(a=coef.alpha, b=coef.beta), q_sum)
    plain = coef._replace(alpha=xp.ones_like(coef.alpha), beta=None)
    return row_loss(xp, plain, l, uq_mixed, None, q_sum=q_mixed)


def mixed_weights(coef: RowCoefficients, wq: Array, w: Array | None) -> Array:
    """``w_k (α q_ik + β)`` from ``wq = w_k q_ik``: the weights of ``uq'`` (:func:`probability_rows`)."""
    if coef.beta is None:
        return wq
    mixed = wq * coef.alpha
    return mixed + (coef.beta if w is None else coef.beta * w)


def softcap_factor(xp: ArrayNamespace, capped: Array, cap: float) -> Array:
    """``1 − tanh²(s/c) = 1 − (z/c)²`` from the capped logits ``z = c tanh(s/c)``: ``∂z/∂s``."""
    t = capped / cap
    return (1.0 - t) * (1.0 + t)  # (1 − t)(1 + t): accurate near saturation, where 1 − t² cancels


def _in_dtype(xp: ArrayNamespace, weight: Array | None, dtype: DType) -> Array | None:
    return weight if weight is None or weight.dtype == dtype else xp.astype(weight, dtype)


def _label_weights(
    xp: ArrayNamespace, y: Array, weight: Array | None, ignore_index: int | None, dtype: DType
) -> tuple[Array, Array, Array]:
    """``(v, v as dtype, v·w_y)``: which rows count, and each row's weight ``v_i w_{y_i}``."""
    if ignore_index is None:
        valid = xp.ones_like(y, dtype=xp.bool)  # ones_like: y may have unknown length (Dask)
    else:
        valid = y != ignore_index
    vf = xp.astype(valid, dtype)
    if weight is None:
        return valid, vf, vf
    safe_y = xp.where(valid, y, xp.zeros_like(y))  # ignored labels may be out of range
    return valid, vf, xp.take(weight, safe_y) * vf


def _known(n: Any) -> bool:
    return n is not None and not (isinstance(n, float) and math.isnan(n))


def mean_denominator(
    xp: ArrayNamespace,
    y: Array,
    *,
    weight: Array | None,
    ignore_index: int | None,
    dtype: DType,
    chunk_rows: int | None = None,
    blockwise: Callable[[Callable[[Array, Array | None], Array]], Array] | None = None,
) -> Array:
    """``D = Σ_i v_i w_{y_i}``, the "mean" denominator of labels ``y``, 0-d in ``dtype``.

    The one place ``D`` is computed. Every row counts 1 (no class weights,
    no ``ignore_index``, ``N`` known): ``D = N``, the labels are not read.
    Otherwise the labels are summed, in fixed chunks of ``chunk_rows``
    (a sum whose order does not depend on how the caller splits its work),
    or, for labels held in blocks (Dask), by ``blockwise(f)``, which maps
    ``f(y_b, w) = D_b`` (this function on one block) over the blocks and adds
    the results. Use it once for the whole batch and hand the result to an
    engine that runs part of it as ``LossInputs.denom``.
    """
    n = y.shape[0]
    if weight is None and ignore_index is None and _known(n):
        return xp.asarray(float(n), dtype=dtype, device=device(y))
    if blockwise is not None:
        return blockwise(
            lambda yb, w: _block_denominator(yb, w, ignore_index=ignore_index, dtype=dtype)
        )
    weight = _in_dtype(xp, weight, dtype)
    if chunk_rows is None or n <= chunk_rows:
        return xp.sum(_label_weights(xp, y, weight, ignore_index, dtype)[2])
    parts = [
        xp.sum(_label_weights(xp, y[j : j + chunk_rows], weight, ignore_index, dtype)[2])
        for j in range(0, n, chunk_rows)
    ]
    return xp.sum(xp.stack(parts))


def _block_denominator(y: Array, w: Array | None, *, ignore_index: int | None, dtype: DType) -> Array:
    """``D_b`` of one block of labels, as a ``(1,)`` array in the block's namespace."""
    import array_api_compat

    xp = array_api_compat.array_namespace(y)
    w = None if w is None else xp.asarray(w)
    d = mean_denominator(xp, y, weight=w, ignore_index=ignore_index, dtype=dtype)
    return xp.reshape(d, (1,))


def row_coefficients(inputs: LossInputs, dtype: DType) -> RowCoefficients:
    """The coefficients α, β, D, a, b, c of the module docstring for ``inputs.y``, in ``dtype``.

    Without class weights and ``ignore_index`` every row has the same
    coefficients: they come back 0-d (they broadcast against ``(N,)``
    vectors), and the labels are not read. ``inputs.denom``: for "mean", the
    whole batch's ``D`` when ``inputs`` is one block of it (default: from
    ``inputs.y``, :func:`mean_denominator`).
    """
    xp, y, ignore_index = inputs.xp, inputs.y, inputs.ignore_index
    num_classes = inputs.scores.shape[1]
    weight = _in_dtype(xp, inputs.weight, dtype)
    if is_probability(inputs):
        return _probability_coefficients(inputs, weight, dtype)
    if weight is None and ignore_index is None:
        valid = None
        vf = wy = xp.ones((), dtype=dtype, device=device(y))
    else:
        valid, vf, wy = _label_weights(xp, y, weight, ignore_index, dtype)
    wsum: Array | float = float(num_classes) if weight is None else xp.sum(weight)
    eps = inputs.label_smoothing
    alpha = wy * (1.0 - eps) if eps else wy
    beta = vf * (eps / num_classes) if eps else None
    denom = None
    if inputs.reduction == "mean":
        denom = inputs.denom
        if denom is None:
            denom = mean_denominator(xp, y, weight=weight, ignore_index=ignore_index, dtype=dtype)
        inv = inverse_denominator(xp, denom)
        # Kept rows 1/D, ignored rows exactly 0 (also when D = 0).
        scale = inv if valid is None else xp.where(valid, inv, xp.zeros_like(vf))
    else:
        scale = vf
    a = alpha * scale
    b = beta * scale if beta is not None else None
    c = (alpha + beta * wsum) * scale if beta is not None else a
    coef = RowCoefficients(alpha, beta, denom, a, b, c, wsum, valid)
    return _with_z_loss(inputs, coef, valid, vf, dtype)


def _probability_coefficients(inputs: LossInputs, weight: Array | None, dtype: DType) -> RowCoefficients:
    """Probability targets: the same 0-d α, β, a, b for every row; ``c`` is :func:`probability_c`'s ``a``."""
    xp, y = inputs.xp, inputs.y
    num_classes = inputs.scores.shape[1]
    one = xp.ones((), dtype=dtype, device=device(y))
    wsum: Array | float = float(num_classes) if weight is None else xp.sum(weight)
    eps = inputs.label_smoothing
    alpha = one * (1.0 - eps)
    beta = one * (eps / num_classes) if eps else None
    denom = None
    scale = one
    if inputs.reduction == "mean":  # D = N rows, never the weights (torch)
        denom = inputs.denom
        if denom is None:
            denom = mean_denominator(xp, y, weight=None, ignore_index=None, dtype=dtype)
        scale = inverse_denominator(xp, denom)
    a = alpha * scale
    b = beta * scale if beta is not None else None
    coef = RowCoefficients(alpha, beta, denom, a, b, a, wsum, None)
    return _with_z_loss(inputs, coef, None, one, dtype)


def _with_z_loss(
    inputs: LossInputs, coef: RowCoefficients, valid: Array | None, vf: Array, dtype: DType
) -> RowCoefficients:
    """``coef`` with the z-loss fields (``zrow = ζ v``, ``zc``, ``V``) when ``ζ > 0``."""
    zeta = inputs.z_loss
    if not zeta:
        return coef
    xp = inputs.xp
    zrow = vf * zeta
    zdenom = None
    if inputs.reduction == "mean":
        zdenom = inputs.zdenom
        if zdenom is None:
            ignore = None if is_probability(inputs) else inputs.ignore_index
            zdenom = mean_denominator(xp, inputs.y, weight=None, ignore_index=ignore, dtype=dtype)
        inv = inverse_denominator(xp, zdenom)
        # Kept rows 2ζ/V, ignored rows exactly 0 (also when V = 0).
        zc = inv * (2.0 * zeta) if valid is None else xp.where(valid, inv * (2.0 * zeta), xp.zeros_like(vf))
    else:
        zc = vf * (2.0 * zeta)
    return coef._replace(zrow=zrow, zc=zc, zdenom=zdenom)


def z_rows(xp: ArrayNamespace, coef: RowCoefficients, lse: Array) -> Array:
    """``ζ v_i lse_i²``, the z-loss term of each row (ignored rows exactly 0, not ``0 · inf``)."""
    assert coef.zrow is not None, "z_rows needs coefficients made with z_loss > 0"
    rows = coef.zrow * (lse * lse)
    if coef.valid is None:
        return rows
    return xp.where(coef.valid, rows, scalar_like(xp, 0.0, rows))


def row_loss(
    xp: ArrayNamespace,
    coef: RowCoefficients,
    l: Array,  # noqa: E741
    t: Array | None,
    u: Array | None,
    q_sum: Array | None = None,
) -> Array:
    """``α (l − t) + β (W l − u)``: the unnormalised cross-entropy of each row.

    ``t`` None: every ``t_i`` is 0 (the NumPy engine shifts rows by their
    target logit). Probability targets pass ``q_sum = Q_i`` and
    ``t = uq_i``: ``α (Q l − uq) + β (W l − u)``. Ignored rows are exactly 0
    (not ``0 · inf``) whatever their logits.
    """
    if q_sum is not None:
        l_q = q_sum * l
        rows = coef.alpha * (l_q if t is None else l_q - t)
    else:
        rows = coef.alpha * (l if t is None else l - t)
    if coef.beta is not None:
        rows = rows + coef.beta * (coef.wsum * l - u)
    if coef.valid is None:
        return rows
    return xp.where(coef.valid, rows, scalar_like(xp, 0.0, rows))  # 0-d: no (N,) zeros


def reduce_loss(
    xp: ArrayNamespace, coef: RowCoefficients, rows: Array, reduction: str, zrows: Array | None = None
) -> Array:
    """Apply the reduction: ``Σ rows / D`` ("mean"), ``Σ rows`` ("sum"), ``rows``.

    ``zrows`` (z-loss, :func:`z_rows`) are added: per row for "none", summed
    for "sum", and divided by their own ``V`` for "mean".
    """
    if reduction == "none":
        return rows if zrows is None else rows + zrows
    total = _total(xp, rows)
    ztotal = None if zrows is None else _total(xp, zrows)
    if reduction == "sum":
        return total if ztotal is None else total + ztotal
    loss = mean_of_total(xp, total, coef.denom)
    return loss if ztotal is None else loss + mean_of_total(xp, ztotal, coef.zdenom)


def _total(xp: ArrayNamespace, rows: Array) -> Array:
    total = xp.sum(rows)
    if isinstance(total, np.generic):  # a 0-d array, not NumPy's scalar
        total = xp.asarray(total)  # (only there: torch.asarray warns on a grad-tracking tensor)
    return total


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
    if isinstance(total, np.ndarray) and isinstance(denom, np.ndarray | np.generic) and denom.ndim == 0:
        # NumPy, one value: the same division without three array calls.
        return np.asarray(total / denom if denom != 0 else np.full_like(total, np.nan))
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
