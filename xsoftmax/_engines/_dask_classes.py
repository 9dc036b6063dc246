r"""The Dask engine on scores chunked along the class axis too: row states merged across class chunks.

Scores ``s`` of shape ``(N, C)`` in blocks ``B_ij`` (row block ``i``, class
block ``j``). In the notation of :mod:`xsoftmax._reduction`, with
``z = c·tanh(s/c)`` under a softcap (else ``z = s``), each block computes the
*partial row state* of its classes ``K_j`` (one task per block, one read):

.. math::

    m_j = \max_{k∈K_j} z_k,\quad r_j = m_j \text{ (0 when not finite)},\quad
    d_j = Σ_{k∈K_j} e^{z_k − r_j},

plus the sums the loss needs: the target logit ``t_j = z_{y}`` (0 when
``y ∉ K_j``) for labels; ``Q_j = Σ w_k q_k`` and
``uq_j = Σ w_k q_k (z_k − r_j)`` for probabilities; ``u_j = Σ w_k (z_k − r_j)``
and ``W_j = Σ_{k∈K_j} w_k`` with label smoothing. Two states merge with the
online max/sum rule of the CUDA kernel (``m = max(m_a, m_b)``, shifts
``r``, ``r_a``, ``r_b`` as above):

.. math::

    d = d_a e^{m_a − m} + d_b e^{m_b − m},\quad
    u = u_a + W_a (r_a − r) + u_b + W_b (r_b − r),\quad
    uq = uq_a + Q_a (r_a − r) + uq_b + Q_b (r_b − r),

and ``t``, ``Q``, ``W`` add (``e^{m_a − m}`` is taken as 1 when
``m_a = m``: an all ``−inf`` chunk next to finite ones gives 0, not NaN). The
merge is associative, so ``dask.array.reduction`` applies it as a tree over
the class blocks of each row block. From the merged state (``l = log d``,
``lse = r + l``) one task per row block computes the coefficients of
:func:`~xsoftmax._reduction.row_coefficients` with the whole batch's ``D``
and ``V``, the block's loss (its rows, or its share of the sum) and per row
``(r, P, a, b)`` with ``P = (c + zc·lse)/d``. Each scores block then writes
its gradient

.. math::  ∂\text{loss}/∂s_{ik} = [P_i e^{z_{ik} − r_i} − a_i T_{ik} − b_i w_k]\; g_{ik}

(``T`` the one-hot label or ``w_k q_ik``, ``g = 1 − tanh²(s/c)`` under a
softcap), a second read of the block. Graph for ``I`` row and ``J`` class
blocks: ``IJ`` states (and the reduction's ``IJ`` identity chunk tasks),
the merge tree ``O(I·J/split_every)``, ``I`` row tasks with two getters each,
``IJ`` gradient blocks, the loss tree sum; ``J`` column offsets.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, NamedTuple

from .._backend import array_namespace, backend_name, device
from .._reduction import (
    LossInputs,
    probability_c,
    probability_rows,
    reduce_loss,
    row_coefficients,
    row_loss,
    softcap_factor,
    z_rows,
)
from .._typing import Array, ArrayNamespace, DType
from .reference import one_hot

__all__ = ["softmax_loss_class_chunked"]

#: Chunk types whose arrays take integer-array assignment (the gradient's label term in place).
_MUTABLE = ("numpy", "cupy")


class _Layout(NamedTuple):
    """Which columns of a row state hold what (``(n, F)`` arrays in the compute dtype)."""

    probabilities: bool
    smoothing: bool
    #: q' = α q + β (probabilities with smoothing): the mixing of uq' (_reduction.probability_rows).
    alpha: float = 1.0
    beta: float = 0.0

    @property
    def width(self) -> int:
        return 3 + (1 if self.probabilities else 0) + (2 if self.smoothing else 0)

    # Columns: 0 m, 1 d, then t (labels) or Q, uq (probabilities), then u, W (smoothing).
    @property
    def u(self) -> int:
        return 4 if self.probabilities else 3


def _capped(xp: ArrayNamespace, s: Array, softcap: float | None, cdt: DType) -> Array:
    """``z = c tanh(s/c)`` (or ``s``) in the compute dtype."""
    s = s if s.dtype == cdt else xp.astype(s, cdt)
    return s if softcap is None else softcap * xp.tanh(s / softcap)


def _shift(xp: ArrayNamespace, m: Array) -> Array:
    """``r``: ``m`` where finite, else 0 (the reference engine's shift)."""
    return xp.where(xp.isfinite(m), m, xp.zeros_like(m))


def _label_columns(xp: ArrayNamespace, y: Array, offset: Any, width: int) -> tuple[Array, Array]:
    """``(inside, k)``: whether row ``i``'s label is a class of this block, and its column here (0 if not)."""
    local = xp.asarray(y) - int(offset[0])
    inside = (local >= 0) & (local < width)
    return inside, xp.where(inside, local, xp.zeros_like(local))


def _block_state(
    s: Array,
    yq: Array,
    w: Any,
    offset: Any,
    *,
    layout: _Layout,
    softcap: float | None,
    cdt: DType,
) -> Array:
    """The partial row state ``(n, F)`` of one scores block (module docstring)."""
    xp = array_namespace(s)
    z = _capped(xp, s, softcap, cdt)
    n, width = z.shape
    m = xp.max(z, axis=1)
    r = _shift(xp, m)
    zr = z - r[:, None]
    cols = [m, xp.sum(xp.exp(zr), axis=1)]
    w = None if w is None else xp.astype(xp.asarray(w), cdt)
    if layout.probabilities:
        q = xp.asarray(yq)
        q = q if q.dtype == cdt else xp.astype(q, cdt)
        wq = q if w is None else q * w
        # uq' with q' = α q + β mixed first: 0 · (−inf) = NaN only where q' = 0, as in torch.
        wq_mixed = wq if not layout.smoothing else layout.alpha * wq + (
            layout.beta if w is None else layout.beta * w
        )
        cols += [xp.sum(wq, axis=1), xp.sum(wq_mixed * zr, axis=1)]
    else:
        # One logit per row (O(n), not an (n, width) mask): 0 where the label is another block's.
        inside, k = _label_columns(xp, yq, offset, width)
        target = xp.take_along_axis(z, k[:, None], axis=1)[:, 0]
        cols.append(xp.where(inside, target, xp.zeros_like(target)))
    if layout.smoothing:
        u = xp.sum(zr if w is None else zr * w, axis=1)
        wsum = float(width) if w is None else xp.sum(w)
        cols += [u, xp.zeros_like(u) + wsum]
    return xp.stack(cols, axis=1) if n else xp.zeros((0, layout.width), dtype=cdt)


def _merge(x: Array, axis: Any = None, keepdims: bool = True, *, layout: _Layout) -> Array:
    """Merge the ``k`` states side by side in ``x`` (``(n, k·F)``) into one ``(n, F)`` state."""
    xp = array_namespace(x)
    f = layout.width
    x = xp.reshape(x, (x.shape[0], x.shape[1] // f, f))
    mk = x[:, :, 0]
    m = xp.max(mk, axis=1)
    # e^{m_k − m}, but 1 where m_k = m (also both −inf: that chunk's d is 0, not NaN).
    same = mk == m[:, None]
    factor = xp.where(same, xp.ones_like(mk), xp.exp(xp.where(same, xp.zeros_like(mk), mk - m[:, None])))
    shift = _shift(xp, mk) - _shift(xp, m)[:, None]  # r_k − r, finite
    cols = [m, xp.sum(x[:, :, 1] * factor, axis=1)]
    if layout.probabilities:
        qk = x[:, :, 2]
        # uq' shifts with Q' = α Q + β W (its mixed weights' sum).
        qk_mixed = qk if not layout.smoothing else layout.alpha * qk + layout.beta * x[:, :, layout.u + 1]
        cols += [xp.sum(qk, axis=1), xp.sum(x[:, :, 3] + qk_mixed * shift, axis=1)]
    else:
        cols.append(xp.sum(x[:, :, 2], axis=1))
    if layout.smoothing:
        wk = x[:, :, layout.u + 1]
        cols += [xp.sum(x[:, :, layout.u] + wk * shift, axis=1), xp.sum(wk, axis=1)]
    return xp.stack(cols, axis=1)


def _identity(x: Array, axis: Any = None, keepdims: bool = True) -> Array:
    return x


def _row_task(
    state: Array,
    y: Array,
    w: Array | None,
    *denoms: Array,
    layout: _Layout,
    inputs: dict[str, Any],
    num_classes: int,
    cdt: DType,
    out_dtype: DType,
) -> tuple[Array, Array]:
    """``(loss_b, factors_b)`` of one row block from its merged state.

    ``loss_b``: the rows' losses ("none", in the input dtype) or the block's
    share of the total as ``(1,)`` in the compute dtype; ``factors_b``: per
    row ``(r, P, a[, b])`` for the gradient blocks. ``denoms``: the whole
    batch's ``D`` and ``V`` (0-d) when the reduction is "mean" and z-loss on.
    """
    xp = array_namespace(state)
    n = state.shape[0]
    m, d = state[:, 0], state[:, 1]
    r = _shift(xp, m)
    l = xp.log(d)  # noqa: E741 (the l of the docstring)
    lse = r + l
    zero = xp.zeros((), dtype=cdt)
    # row_coefficients reads only the scores' C (and, for probabilities, that y is 2-D).
    shape_only = xp.broadcast_to(zero, (n, num_classes))
    denom = xp.astype(xp.asarray(denoms[0]), cdt) if denoms else None
    zdenom = xp.astype(xp.asarray(denoms[1]), cdt) if len(denoms) > 1 else None
    labels = shape_only if layout.probabilities else xp.asarray(y)
    weight = None if w is None else xp.asarray(w)
    inp = LossInputs(
        xp, shape_only, labels, weight, inputs["ignore_index"], inputs["label_smoothing"],
        inputs["reduction"], False, denom, backend_name(xp), inputs["z_loss"], inputs["softcap"], zdenom,
    )  # fmt: skip
    coef = row_coefficients(inp, cdt)
    u = state[:, layout.u] if layout.smoothing else None
    if layout.probabilities:
        q_sum = state[:, 2]
        rows = probability_rows(xp, coef, l, q_sum, state[:, 3])
        c = probability_c(coef, q_sum)
    else:
        rows = row_loss(xp, coef, l, state[:, 2] - r, u)
        c = coef.c
    zrows = None
    if coef.zc is not None:
        zrows = z_rows(xp, coef, lse)
        c = c + coef.zc * lse
    reduction = inputs["reduction"]
    if reduction == "none":
        loss = rows if zrows is None else rows + zrows
        loss = loss if loss.dtype == out_dtype else xp.astype(loss, out_dtype)
    else:
        loss = xp.reshape(reduce_loss(xp, coef, rows, reduction, zrows), (1,))
    ones = xp.ones((n,), dtype=cdt)
    cols = [r, c / d, coef.a * ones] + ([] if coef.b is None else [coef.b * ones])
    return loss, xp.stack(cols, axis=1)


def _grad_block(
    s: Array,
    yq: Array,
    w: Any,
    offset: Any,
    factor_blocks: list[Array],
    *,
    layout: _Layout,
    softcap: float | None,
    cdt: DType,
) -> Array:
    """``∂loss/∂s`` of one scores block from its row block's factors (module docstring)."""
    xp = array_namespace(s)
    (factors,) = factor_blocks  # the one block of the contracted factor axis
    z = _capped(xp, s, softcap, cdt)
    r, p_scale, a = factors[:, 0:1], factors[:, 1:2], factors[:, 2:3]
    g = p_scale * xp.exp(z - r)
    w = None if w is None else xp.astype(xp.asarray(w), cdt)
    if layout.probabilities:
        q = xp.asarray(yq)
        q = q if q.dtype == cdt else xp.astype(q, cdt)
        g = g - a * (q if w is None else q * w)
    elif backend_name(xp) in _MUTABLE:
        # g is this task's own array: subtract a_i at the one label column of each row in place.
        inside, k = _label_columns(xp, yq, offset, z.shape[1])
        rows = xp.arange(z.shape[0], device=device(k))
        g[rows, k] = g[rows, k] - xp.where(inside, a[:, 0], xp.zeros_like(a[:, 0]))
    else:
        hot = one_hot(xp, xp.asarray(yq) - int(offset[0]), z.shape[1])
        g = g - xp.where(hot, a, xp.zeros_like(a))
    if layout.smoothing:
        b = factors[:, 3:4]
        g = g - (b if w is None else b * w)
    if softcap is not None:
        g = g * softcap_factor(xp, z, softcap)
    return g if g.dtype == s.dtype else xp.astype(g, s.dtype)


def softmax_loss_class_chunked(
    inp: LossInputs,
    s: Array,
    y: Array,
    w: Array | None,
    denoms: list[Array],
    cdt: DType,
) -> tuple[Array, Array]:
    """``(loss, dscores)`` for Dask scores with several class blocks (module docstring).

    ``y`` is chunked like ``s``'s rows (labels) or like ``s`` (probabilities);
    ``w`` is the whole weight in one chunk; ``denoms`` the 0-d Dask ``D`` and
    ``V`` the reduction needs ("mean": ``[D]``, ``[D, V]`` with z-loss; else ``[]``).
    """
    import dask.array as da
    from dask.array.utils import meta_from_array

    probabilities = y.ndim == 2
    eps = inp.label_smoothing
    layout = _Layout(probabilities, eps > 0, 1.0 - eps, eps / s.shape[1])
    col_chunks = s.chunks[1]
    # Column indices chunked like the classes: a block's first one is its offset.
    offsets = da.arange(s.shape[1], chunks=(col_chunks,))
    wj = None if w is None else w.rechunk((col_chunks,))
    y_ind = "ij" if probabilities else "i"
    block_args: list[Any] = [s, "ij", y, y_ind, wj, None if wj is None else "j", offsets, "j"]
    meta2 = meta_from_array(s._meta, ndim=2).astype(cdt)
    meta1 = meta_from_array(s._meta, ndim=1)
    f = layout.width
    states = da.blockwise(
        functools.partial(_block_state, layout=layout, softcap=inp.softcap, cdt=cdt),
        "ij",
        *block_args,
        adjust_chunks={"j": f},
        token="xsoftmax-row-state",
        meta=meta2,
    )
    merge = functools.partial(_merge, layout=layout)
    merged = da.reduction(
        states,
        _identity,
        merge,
        combine=merge,
        axis=1,
        keepdims=True,
        output_size=f,
        concatenate=True,
        dtype=cdt,
        meta=meta2,
        name="xsoftmax-merge-row-state",
    )
    options = {
        k: getattr(inp, k) for k in ("ignore_index", "label_smoothing", "reduction", "z_loss", "softcap")
    }
    row_args: list[Any] = [merged, "if", None if probabilities else y, None if probabilities else "i"]
    row_args += [w, None if w is None else "k"]
    for denom in denoms:
        row_args += [denom, ()]
    reduction = inp.reduction
    pair = da.blockwise(
        functools.partial(
            _row_task, layout=layout, inputs=options, num_classes=s.shape[1], cdt=cdt, out_dtype=s.dtype
        ),
        "i",
        *row_args,
        token="xsoftmax-row-task",
        concatenate=True,
        meta=(meta1, meta2),
    )
    factors = da.blockwise(
        operator.itemgetter(1),
        "if",
        pair,
        "i",
        new_axes={"f": 4 if layout.smoothing else 3},  # (r, P, a[, b])
        token="xsoftmax-row-factors",
        meta=meta2,
    )
    dscores = da.blockwise(
        functools.partial(_grad_block, layout=layout, softcap=inp.softcap, cdt=cdt),
        "ij",
        *block_args,
        factors,
        "if",
        concatenate=False,
        token="xsoftmax-dscores",
        meta=meta_from_array(s._meta, ndim=2),
    )
    rows = da.blockwise(
        operator.itemgetter(0),
        "i",
        pair,
        "i",
        adjust_chunks=None if reduction == "none" else {"i": 1},
        token="xsoftmax-row-loss",
        meta=meta1 if reduction == "none" else meta1.astype(cdt),
    )
    if reduction == "none":
        return rows, dscores
    return rows.sum(dtype=cdt).astype(s.dtype), dscores
