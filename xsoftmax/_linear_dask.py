r"""Fused linear + softmax loss on Dask: the eager chunked code mapped over row blocks of ``x``, lazily.

``x`` is split by rows into blocks ``B_1 … B_K`` (all ``D`` features of a row
in one block); ``w``, ``b`` and the class weights are one block each. The
"mean" denominator ``D`` of the whole batch (and ``V`` with z-loss) is a 0-d
lazy array computed from the labels first (see :mod:`xsoftmax._linear`); each block's task runs
the eager chunked code of its chunk type (NumPy, CuPy) with that ``D`` and
yields ``(loss_b, dx_b, dw_b, db_b)``: ``dx`` is the concatenation of the
``dx_b``, and

.. math::  dw = Σ_b x_{B_b}ᵀ g_{B_b}, \qquad db = Σ_b Σ_{i∈B_b} g_i

are tree sums of the ``(K, D, C)`` and ``(K, C)`` stacks of partial sums
(``dask.array.sum`` over the block axis). The loss is the tree sum of the
blocks' shares ("mean", "sum") or the blocks' row losses ("none").
Nothing is computed until the caller asks.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from ._backend import array_namespace
from ._typing import Array

__all__ = ["linear_softmax_loss_dask"]


def linear_softmax_loss_dask(
    p: Any, eager: Callable[..., tuple[Any, ...]], denom: Any
) -> tuple[Any, ...]:
    """``(loss, dx, dw, db)`` as lazy Dask arrays for the validated problem ``p``.

    ``eager`` runs one block as :mod:`xsoftmax._linear` runs an in-memory
    batch; ``denom`` is the whole batch's lazy "mean" denominators (else None).
    """
    import dask.array as da
    from dask.array.utils import meta_from_array

    x = p.x.rechunk({1: -1})  # a no-op when x already has whole rows in its blocks
    y = p.y.rechunk((x.chunks[0],))
    d, c = p.w.shape
    args: list[Any] = [x, "ij", y, "i", p.w.rechunk(-1), "jk"]
    if p.b is not None:
        args += [p.b.rechunk(-1), "k"]
    if p.weight is not None:
        args += [p.weight.rechunk(-1), "k"]
    if p.reduction == "mean":
        args += [denom.ce, ()]
        if denom.z is not None:
            args += [denom.z, ()]
    meta2 = x._meta.astype(p.dtype)
    quad = da.blockwise(
        _block,
        "i",
        *args,
        token="xsoftmax-linear-softmax-loss",
        concatenate=False,  # one block along j and k: no copy of w per task
        meta=(meta2, meta2, meta2, meta2),
        eager=eager,
        options=p._replace(x=None, w=None, b=None, y=None, weight=None, xp=None),
        has_bias=p.b is not None,
        has_weight=p.weight is not None,
        denominators=type(denom),  # _linear's record of D and V (not imported: _linear imports us)
    )
    meta1 = meta_from_array(meta2, ndim=1)

    def get(item: int, index: str, **kw: Any) -> Any:
        return da.blockwise(
            operator.itemgetter(item), index, quad, "i", meta=meta1 if item == 0 else meta2, **kw
        )

    dx = get(1, "ij", new_axes={"j": d})
    dw = get(2, "ijk", new_axes={"j": d, "k": c}, adjust_chunks={"i": 1}).sum(axis=0)
    db = None
    if p.b is not None:
        db = get(3, "ik", new_axes={"k": c}, adjust_chunks={"i": 1}).sum(axis=0)
    if p.reduction == "none":
        loss = get(0, "i")
    else:
        loss = get(0, "i", adjust_chunks={"i": 1}).sum()
    return loss, dx, dw, db


def _one(block: Any) -> Any:
    """The single block of a list (``concatenate=False`` hands contracted blocks as lists)."""
    while isinstance(block, list):
        (block,) = block
    return block


def _block(
    x: list[Array],
    y: Array,
    w: list[Any],
    *extra: Any,
    eager: Callable[..., tuple[Any, ...]],
    options: Any,
    has_bias: bool,
    has_weight: bool,
    denominators: Any,
) -> tuple[Any, ...]:
    """``(loss_b, dx_b, dw_b[None], db_b[None])`` of one row block, by the eager chunked code."""
    x = _one(x)
    xp = array_namespace(x)
    extra_list = list(extra)
    b = xp.asarray(_one(extra_list.pop(0))) if has_bias else None
    weight = xp.asarray(_one(extra_list.pop(0))) if has_weight else None
    denom = None
    if options.reduction == "mean":
        ce = xp.asarray(extra_list.pop(0), dtype=options.cdt)
        z = xp.asarray(extra_list.pop(0), dtype=options.cdt) if options.z_loss else None
        denom = denominators(ce, z)
    p = options._replace(xp=xp, x=x, w=xp.asarray(_one(w)), b=b, y=xp.asarray(y), weight=weight)
    loss, dx, dw, db = eager(p, denom)
    if options.reduction != "none":
        loss = xp.reshape(xp.asarray(loss), (1,))
    db = db[None, :] if db is not None else None
    return loss, dx, dw[None, ...], db
