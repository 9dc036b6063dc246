r"""Fused linear + softmax cross-entropy: the ``(N, C)`` logits exist one row chunk at a time.

For ``x`` ``(N, D)``, ``w`` ``(D, C)``, ``b`` ``(C,)`` (or None) and labels
``y`` ``(N,)`` the logits are ``s = x w + b`` and, with ``g = ∂loss/∂s`` as
given by :mod:`xsoftmax._reduction` (``g_ik = c_i p_ik − a_i 1[k = y_i] −
b_i w_k``),

.. math::

    dx = g\, wᵀ, \qquad dw = xᵀ g = Σ_r x_rᵀ g_r, \qquad db = Σ_i g_i,

where ``r`` runs over row chunks. Each row of ``g`` depends only on its own
row of ``s`` and on the "mean" denominator ``D = Σ_i v_i w_{y_i}``, a sum
over the *whole* batch's labels. ``D`` is computed once from all labels
before the first chunk and handed to the loss engine of every chunk
(``LossInputs.denom``, as the Dask engine does for its blocks), so a chunk's
engine call gives exactly its rows of the whole batch's gradient and its
share ``Σ_{i∈r} row_i / D`` of the loss.

Per chunk of ``R`` rows: ``s_r = x_r w + b`` goes into one reused ``(R, C)``
buffer, the backend's fused loss engine turns it into ``g_r`` in place
(``out=``), then ``dx_r = g_r wᵀ`` is written into ``dx`` and ``x_rᵀ g_r`` is
added to ``dw``. Peak extra memory is ``O(R · C)``, not ``O(N · C)``.

Default ``R`` (:func:`default_chunk_rows`): the buffer gets a budget of
1/16 of the ``N × C`` logits, i.e. ``R = ⌈N / 16⌉``, but at least
:data:`MIN_CHUNK_ROWS` rows (smaller matrix products run well below BLAS
peak) and at most ``N``. With the loss engine's own scratch (under a tenth
of the chunk) and a quarter of it for adding to ``dw``, the extra
memory stays under 1/8 of the logits for ``N ≥ 16 · MIN_CHUNK_ROWS``.

Backends: NumPy and CuPy run the fused engine in place on a preallocated
buffer and accumulate with ``matmul(..., out=)``; torch, JAX and
array-api-strict run the engine of their namespace (the reference code) on
each chunk, functionally; Dask maps the eager code over row blocks of ``x``
lazily, with ``dw`` and ``db`` as tree sums of the blocks' partial sums.
float16 and bfloat16 are computed in float32 and returned in the input dtype.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, NamedTuple

from ._backend import array_namespace, backend_name, device
from ._dtypes import compute_dtype
from ._engines import select_engine
from ._reduction import mean_denominator as reduction_denominator
from ._reduction import row_coefficients, row_loss, softcap_factor, z_rows
from ._typing import Array, ArrayNamespace, DType
from ._validate import (
    LossInputs,
    _wide_labels,
    bad_labels,
    check_floating,
    check_labels,
    check_loss_inputs,
    check_positive_int,
    check_same_device,
)

__all__ = [
    "DW_BLOCK_BYTES",
    "MIN_CHUNK_ROWS",
    "default_chunk_rows",
    "linear_lse_forward",
    "linear_none_backward",
    "linear_softmax_loss",
]

#: Fewest rows per chunk by default: products of fewer rows run well below BLAS peak.
MIN_CHUNK_ROWS = 256
#: Share of the ``N × C`` logits one chunk's buffer may take by default.
CHUNK_SHARE = 1 / 16
#: Temporary for ``x_rᵀ g_r`` before it is added to ``dw``, a block of columns at a time
#: (NumPy's matmul cannot accumulate into its ``out``).
DW_BLOCK_BYTES = 2 * 1024 * 1024


class Problem(NamedTuple):
    """Validated arguments of :func:`linear_softmax_loss`."""

    xp: ArrayNamespace
    x: Array
    w: Array
    b: Array | None
    y: Array
    weight: Array | None
    ignore_index: int | None
    label_smoothing: float
    reduction: str
    labels_unchecked: bool
    dtype: DType  # of the results
    cdt: DType  # of the arithmetic
    chunk_rows: int | None  # None: default_chunk_rows
    z_loss: float = 0.0
    softcap: float | None = None


def default_chunk_rows(n: int) -> int:
    """``min(N, max(MIN_CHUNK_ROWS, ⌈N · CHUNK_SHARE⌉))`` (module docstring)."""
    return max(1, min(n, max(MIN_CHUNK_ROWS, math.ceil(n * CHUNK_SHARE))))


def _shape(a: Array) -> tuple[Any, ...]:
    return tuple(a.shape)


def check_linear_inputs(
    x: Any,
    w: Any,
    b: Any,
    y: Any,
    *,
    reduction: Any,
    weight: Any,
    ignore_index: Any,
    label_smoothing: Any,
    chunk_rows: Any,
    z_loss: Any = 0.0,
    softcap: Any = None,
) -> Problem:
    """Validate every argument of :func:`linear_softmax_loss`: chaining shapes, one namespace, labels."""
    names = ("x", "w", "b", "y", "weight")
    xp = array_namespace(x, w, b, y, weight, names=names)
    check_same_device(xp, names, x, w, b, y, weight)
    for name, arr in (("x", x), ("w", w), ("b", b)):
        if arr is not None:
            check_floating(xp, arr, name)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D with shape (N, D), got shape {_shape(x)}")
    if w.ndim != 2 or w.shape[0] != x.shape[1]:
        raise ValueError(
            f"x (N, D) and w (D, C) do not chain: x has shape {_shape(x)}, w has shape {_shape(w)} "
            f"(expected ({x.shape[1]}, C))"
        )
    c = w.shape[1]
    if b is not None and (b.ndim != 1 or b.shape[0] != c):
        raise ValueError(
            f"b must have shape (C,) = ({c},) to match w (D, C) of shape {_shape(w)}, got shape {_shape(b)}"
        )
    if y.ndim != 1 or (not _unknown(x.shape[0]) and not _unknown(y.shape[0]) and y.shape[0] != x.shape[0]):
        raise ValueError(
            f"y must have shape (N,) with one label per row of x: x has shape {_shape(x)}, "
            f"y has shape {_shape(y)}"
        )
    if xp.isdtype(y.dtype, "real floating"):
        # Class probabilities would need an (N, C) target, which the fused loss exists to avoid.
        raise TypeError(
            f"y must have an integer dtype (class labels), got {y.dtype}: linear_softmax_loss takes no "
            "probability targets; cast labels stored as floats with y.astype(np.int64)"
        )
    if chunk_rows is not None:
        chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
    dtypes = [a.dtype for a in (x, w, b) if a is not None]
    dtype = xp.result_type(*dtypes)
    cdt = compute_dtype(xp, dtype)
    # The options, label dtype and weight are checked by softmax_loss's own
    # validation, on an empty (0, C) stand-in for the logits (no N × C array).
    stub = check_loss_inputs(
        xp.zeros((0, c), dtype=cdt, device=device(x)),
        y[:0],
        reduction=reduction,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        engine="auto",
    )
    y = _wide_labels(xp, y, c, stub.ignore_index)
    y, unchecked = check_labels(xp, y, c, stub.ignore_index, backend=backend_name(xp))
    return Problem(
        xp, x, w, b, y, weight, stub.ignore_index, stub.label_smoothing, stub.reduction,
        unchecked, dtype, cdt, chunk_rows, stub.z_loss, stub.softcap,
    )  # fmt: skip


def _unknown(dim: Any) -> bool:
    return dim is None or (isinstance(dim, float) and math.isnan(dim))


class Denominators(NamedTuple):
    """The whole batch's "mean" denominators, computed once before the first chunk."""

    ce: Array  # D = Σ_i v_i w_{y_i}
    z: Array | None  # V = Σ_i v_i, with z-loss only


def mean_denominator(p: Problem) -> Denominators:
    """``D`` and, with z-loss, ``V`` over all labels, once, by the shared loss semantics."""
    ce = reduction_denominator(p.xp, p.y, weight=p.weight, ignore_index=p.ignore_index, dtype=p.cdt)
    z = None
    if p.z_loss:
        z = reduction_denominator(p.xp, p.y, weight=None, ignore_index=p.ignore_index, dtype=p.cdt)
    return Denominators(ce, z)


def _chunk_inputs(p: Problem, s: Array, r0: int, r1: int, denom: Denominators | None) -> LossInputs:
    return LossInputs(
        p.xp, s, p.y[r0:r1], p.weight, p.ignore_index, p.label_smoothing, p.reduction,
        p.labels_unchecked, None if denom is None else denom.ce, backend_name(p.xp),
        p.z_loss, p.softcap, None if denom is None else denom.z,
    )  # fmt: skip


def _cast(xp: ArrayNamespace, a: Array | None, dtype: DType) -> Array | None:
    return a if a is None or a.dtype == dtype else xp.astype(a, dtype)


def _finish(p: Problem, loss: Any, dx: Array, dw: Array, db: Array | None) -> tuple[Any, ...]:
    xp = p.xp
    return tuple(_cast(xp, a, p.dtype) for a in (loss, dx, dw, db))


def _empty_loss(p: Problem, denom: Denominators | None) -> Array:
    """The loss of ``N = 0`` rows: NaN for "mean" (``D = 0``), 0 for "sum", ``(0,)`` for "none"."""
    xp, dev = p.xp, device(p.x)
    if p.reduction == "none":
        return xp.zeros((0,), dtype=p.cdt, device=dev)
    value = float("nan") if p.reduction == "mean" else 0.0
    return xp.asarray(value, dtype=p.cdt, device=dev)


def native(xp: ArrayNamespace) -> tuple[Any, Any]:
    """``(module, engine)`` of a mutable backend: ``cupy`` or ``numpy`` and its fused loss engine."""
    if backend_name(xp) == "cupy":
        import cupy as mod
    else:
        import numpy as mod
    return mod, select_engine(backend_name(xp), "auto")


def _mutable(p: Problem, denom: Denominators | None, mod: Any = None, engine: Any = None) -> tuple[Any, ...]:
    """NumPy and CuPy: the fused engine in place on one buffer; products with ``out=``.

    ``mod`` and ``engine`` default to :func:`native`'s (tests pass the CuPy
    engine's driver with a CPU twin of its kernels on NumPy buffers).
    """
    if mod is None or engine is None:
        mod, engine = native(p.xp)
    n, d = p.x.shape
    c = p.w.shape[1]
    cdt = p.cdt
    w = mod.asarray(_cast(p.xp, p.w, cdt))
    b = None if p.b is None else mod.asarray(_cast(p.xp, p.b, cdt))
    rows = default_chunk_rows(n) if p.chunk_rows is None else min(p.chunk_rows, max(n, 1))
    buf = mod.empty((rows, c), dtype=cdt)
    dx = mod.empty((n, d), dtype=cdt)
    dw = mod.zeros((d, c), dtype=cdt)
    db = None if b is None else mod.zeros((c,), dtype=cdt)
    # x_rᵀ g_r goes to dw through a temporary of a few columns at a time, at
    # most a quarter of the buffer's bytes (and DW_BLOCK_BYTES).
    part_bytes = min(DW_BLOCK_BYTES, buf.nbytes // 4)
    cols = max(1, min(c, part_bytes // max(1, d * buf.itemsize)))
    part = mod.empty((d, cols), dtype=cdt) if n > rows or cols < c else None
    row_losses = mod.empty((n,), dtype=cdt) if p.reduction == "none" else None
    total: Any = None
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        xr = mod.asarray(p.x[r0:r1], dtype=cdt)  # a view unless x must be widened
        s = buf[: r1 - r0]
        mod.matmul(xr, w, out=s)
        if b is not None:
            s += b
        loss, g = engine(_chunk_inputs(p, s, r0, r1, denom), out=s)
        mod.matmul(g, w.T, out=dx[r0:r1])
        if part is None or (r0 == 0 and cols == c):
            mod.matmul(xr.T, g, out=dw)  # the first chunk's product is dw itself
        else:
            for j0 in range(0, c, cols):
                j1 = min(c, j0 + cols)
                blk = part[:, : j1 - j0]
                mod.matmul(xr.T, g[:, j0:j1], out=blk)
                dw[:, j0:j1] += blk
        if db is not None:
            db += g.sum(axis=0)
        if row_losses is not None:
            row_losses[r0:r1] = loss
        else:
            total = loss if total is None else total + loss
    if row_losses is not None:
        out_loss = row_losses
    else:
        out_loss = _empty_loss(p, denom) if total is None else mod.asarray(total)
    return _finish(p, out_loss, dx, dw, db)


def _functional(p: Problem, denom: Denominators | None) -> tuple[Any, ...]:
    """torch, JAX, array-api-strict: the namespace's engine on each chunk, no in-place updates."""
    xp = p.xp
    engine = select_engine(backend_name(xp), "auto")
    n = p.x.shape[0]
    w = _cast(xp, p.w, p.cdt)
    b = _cast(xp, p.b, p.cdt)
    wt = xp.matrix_transpose(w)
    rows = default_chunk_rows(n) if p.chunk_rows is None else min(p.chunk_rows, max(n, 1))
    dxs, losses = [], []
    dw: Any = None
    db: Any = None
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        xr = _cast(xp, p.x[r0:r1, ...], p.cdt)
        s = xp.matmul(xr, w)
        if b is not None:
            s = s + b
        loss, g = engine(_chunk_inputs(p, s, r0, r1, denom))
        dxs.append(xp.matmul(g, wt))
        part = xp.matmul(xp.matrix_transpose(xr), g)
        dw = part if dw is None else dw + part
        if b is not None:
            colsum = xp.sum(g, axis=0)
            db = colsum if db is None else db + colsum
        losses.append(loss)
    dev = device(p.x)
    if n == 0:
        dx = xp.zeros(p.x.shape, dtype=p.cdt, device=dev)
        dw = xp.zeros(p.w.shape, dtype=p.cdt, device=dev)
        db = None if b is None else xp.zeros(b.shape, dtype=p.cdt, device=dev)
        return _finish(p, _empty_loss(p, denom), dx, dw, db)
    dx = xp.concat(dxs, axis=0) if len(dxs) > 1 else dxs[0]
    if p.reduction == "none":
        loss = xp.concat(losses, axis=0) if len(losses) > 1 else losses[0]
    else:
        loss = functools.reduce(operator.add, losses)
    return _finish(p, loss, dx, dw, db)


def _eager(p: Problem, denom: Denominators | None) -> tuple[Any, ...]:
    if backend_name(p.xp) in ("numpy", "cupy"):
        return _mutable(p, denom)
    return _functional(p, denom)


def linear_softmax_loss(
    x: Array,
    w: Array,
    b: Array | None,
    y: Array,
    /,
    *,
    reduction: str = "mean",
    weight: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_rows: int | None = None,
) -> tuple[Array, Array, Array, Array | None]:
    r"""Softmax cross-entropy of the logits ``x w + b``, with the gradients of ``x``, ``w`` and ``b``.

    Equal to ``affine_forward`` → ``softmax_loss`` → ``affine_backward`` on the
    same options, without ever holding the ``(N, C)`` logits or their
    gradient: rows go ``chunk_rows`` at a time through one reused buffer that
    the fused loss engine overwrites with its gradient ``g`` (see the module
    docstring for the math and memory).

    Inputs:

    - ``x``: ``(N, D)``; ``w``: ``(D, C)``; ``b``: ``(C,)`` or None.
    - ``y``: ``(N,)`` integer labels; ``reduction``, ``weight``,
      ``ignore_index``, ``label_smoothing``, ``z_loss``, ``softcap``: as in
      :func:`xsoftmax.softmax_loss` (the "mean" denominators ``D`` and, for
      the z-loss, ``V`` are the whole batch's, computed once).
    - ``chunk_rows``: rows per chunk; default ``⌈N/16⌉`` clamped to
      ``[256, N]``, a buffer of about 1/16 of the logits.

    Returns ``(loss, dx, dw, db)``: ``loss`` 0-d or ``(N,)`` ("none");
    ``dx = g wᵀ`` ``(N, D)``, ``dw = xᵀ g`` ``(D, C)``, ``db = Σ_i g_i``
    ``(C,)`` or None when ``b`` is None. For "none" the gradients are those of
    ``Σ_i loss_i``. Results have the inputs' (promoted) dtype, float16 and
    bfloat16 computed in float32; inputs are never modified. On Dask
    everything is lazy.
    """
    p = check_linear_inputs(
        x, w, b, y,
        reduction=reduction, weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, chunk_rows=chunk_rows, z_loss=z_loss, softcap=softcap,
    )  # fmt: skip
    denom = mean_denominator(p) if p.reduction == "mean" else None
    if backend_name(p.xp) == "dask":
        from ._linear_dask import linear_softmax_loss_dask

        return linear_softmax_loss_dask(p, _eager, denom)
    return _eager(p, denom)


# ---- "none" in two passes, for the autograd adapters -------------------------------------------


def _none_coefficients(p: Problem, yr: Array, weight: Array | None) -> Any:
    # w[:0] stands for the logits: the coefficients read only their class count.
    inputs = LossInputs(
        p.xp, p.w[:0], yr, weight, p.ignore_index, p.label_smoothing, "none",
        p.labels_unchecked, None, backend_name(p.xp), p.z_loss, p.softcap,
    )  # fmt: skip
    return row_coefficients(inputs, p.cdt)


def _chunks(p: Problem) -> Any:
    """``(r0, r1, x_r, z_r)``: each chunk's rows of ``x`` and its logits, softcapped when asked."""
    n = p.x.shape[0]
    rows = default_chunk_rows(n) if p.chunk_rows is None else min(p.chunk_rows, max(n, 1))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        xr = _cast(p.xp, p.x[r0:r1, ...], p.cdt)
        s = p.xp.matmul(xr, _cast(p.xp, p.w, p.cdt))
        if p.b is not None:
            s = s + _cast(p.xp, p.b, p.cdt)
        if p.softcap is not None:
            s = p.xp.tanh(s / p.softcap) * p.softcap
        yield r0, r1, xr, s


def _target_logits(xp: ArrayNamespace, s: Array, y: Array) -> Array:
    """``s_{i, y_i}`` (0 for labels outside ``[0, C)``, i.e. ignored rows)."""
    c = s.shape[1]
    inside = (y >= 0) & (y < c)
    safe = xp.where(inside, y, xp.zeros_like(y))
    picked = xp.take_along_axis(s, xp.astype(safe, xp.int64)[:, None], axis=1)[:, 0]
    return xp.where(inside, picked, xp.zeros_like(picked))


def _poison(p: Problem, yr: Array, a: Array) -> Array:
    """Rows of ``a`` with labels that could not be checked (traced JAX) and are bad become NaN."""
    if not p.labels_unchecked:
        return a
    bad = bad_labels(yr, p.w.shape[1], p.ignore_index)
    nan = p.xp.asarray(float("nan"), dtype=a.dtype)
    return p.xp.where(bad if a.ndim == 1 else bad[:, None], nan, a)


def linear_lse_forward(p: Problem) -> tuple[Array, Array]:
    """``(row losses, lse)`` of every row, chunk by chunk: the forward pass of "none".

    With ``l_i = lse_i`` (no shift), ``t_i = s_{i,y_i}`` and ``u_i = Σ_k w_k s_ik``
    the row loss is :func:`~xsoftmax._reduction.row_loss` (plus
    :func:`~xsoftmax._reduction.z_rows` with z-loss); ``s`` is the softcapped
    ``c tanh(s/c)`` under ``softcap``. No gradient is formed.
    """
    from ._primitives import logsumexp

    xp = p.xp
    weight = _cast(xp, p.weight, p.cdt)
    rows, lses = [], []
    for r0, r1, _, s in _chunks(p):
        yr = p.y[r0:r1]
        lse = logsumexp(s, axis=1)
        coef = _none_coefficients(p, yr, weight)
        u = None
        if coef.beta is not None:
            u = xp.sum(s * weight, axis=1) if weight is not None else xp.sum(s, axis=1)
        rl = row_loss(xp, coef, lse, _target_logits(xp, s, yr), u)
        if coef.zrow is not None:
            rl = rl + z_rows(xp, coef, lse)
        rows.append(_poison(p, yr, rl))
        lses.append(lse)
    if not rows:
        empty = xp.zeros((0,), dtype=p.cdt, device=device(p.x))
        return empty, empty
    return xp.concat(rows, axis=0), xp.concat(lses, axis=0)


def linear_none_backward(p: Problem, lse: Array, grad_rows: Array) -> tuple[Array, Array, Array | None]:
    r"""``(dx, dw, db)`` of ``Σ_i γ_i loss_i`` ("none" with upstream ``γ``), from the kept ``lse``.

    Each chunk's logits are recomputed; ``p_ik = exp(z_ik − lse_i)`` and the
    row gradient is ``γ_i ((c_i + zc_i lse_i) p_ik − a_i 1[k = y_i] − b_i w_k) · g_ik``
    with the "none" coefficients of :func:`~xsoftmax._reduction.row_coefficients`
    (``zc = 0`` without z-loss; ``z = c tanh(s/c)`` and ``g = 1 − (z/c)²`` under
    ``softcap``, else ``z = s`` and no factor).
    """
    from ._engines.reference import one_hot

    xp = p.xp
    weight = _cast(xp, p.weight, p.cdt)
    grad_rows = _cast(xp, grad_rows, p.cdt)
    dxs = []
    dw: Any = None
    db: Any = None
    for r0, r1, xr, s in _chunks(p):
        yr = p.y[r0:r1]
        coef = _none_coefficients(p, yr, weight)
        gam = grad_rows[r0:r1]
        lse_r = lse[r0:r1]
        prob = xp.exp(s - lse_r[:, None])
        hot = one_hot(xp, yr, s.shape[1])
        c = coef.c if coef.zc is None else coef.c + coef.zc * lse_r
        g = (gam * c)[:, None] * prob - xp.where(hot, (gam * coef.a)[:, None], xp.zeros_like(prob))
        if coef.b is not None:
            wk = weight if weight is not None else xp.ones_like(prob[0])
            g = g - (gam * coef.b)[:, None] * wk
        if p.softcap is not None:
            g = g * softcap_factor(xp, s, p.softcap)
        g = _poison(p, yr, g)
        dxs.append(xp.matmul(g, xp.matrix_transpose(_cast(xp, p.w, p.cdt))))
        part = xp.matmul(xp.matrix_transpose(xr), g)
        dw = part if dw is None else dw + part
        if p.b is not None:
            colsum = xp.sum(g, axis=0)
            db = colsum if db is None else db + colsum
    dev = device(p.x)
    dx = xp.concat(dxs, axis=0) if dxs else xp.zeros(p.x.shape, dtype=p.cdt, device=dev)
    if dw is None:
        dw = xp.zeros(p.w.shape, dtype=p.cdt, device=dev)
        db = None if p.b is None else xp.zeros(p.b.shape, dtype=p.cdt, device=dev)
    return dx, dw, db
