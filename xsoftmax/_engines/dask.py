r"""The Dask engine: the chunks' own engine mapped over row blocks.

Scores ``s`` of shape ``(N, C)`` are split by rows into blocks ``B_1 … B_K``,
each holding all ``C`` classes of its rows. In the notation of
:mod:`xsoftmax._reduction`, every quantity is per row (``m, l, t, u`` and the
coefficients ``α, β, a, b, c``) except the "mean" denominator

.. math::  D = Σ_i v_i w_{y_i} = Σ_b D_b, \qquad D_b = Σ_{i ∈ B_b} v_i w_{y_i},

a sum over *all* rows. Without weights and ``ignore_index`` it is ``N``;
otherwise it depends on the labels only, so it is computed first (one task
per label block, then a tree sum: ``N`` integers read, no scores), and each
block's kernel receives it as a 0-d input. The chunk engine takes it as
``LossInputs.denom`` (:func:`~xsoftmax._reduction.mean_denominator` of all
labels, used by :func:`~xsoftmax._reduction.row_coefficients` instead of the
block's own ``D``), so one call gives exactly
the "mean" gradient of the block's rows and the block's share
``Σ_{i∈B_b} row_i / D`` of the mean loss, with no extra pass over the
``(N_b, C)`` block; the loss is the tree sum of the shares (NaN when
``D = 0``, as every share is).

With z-loss the "mean" also needs ``V = Σ_i v_i`` (rows not ignored), made
the same way and passed as ``LossInputs.zdenom``; probability targets (``y``
chunked like the scores) have ``D = V = N``. Scores chunked along the class
axis too are handled by :mod:`xsoftmax._engines._dask_classes` (row states
merged across the class chunks), with the same ``D`` and ``V``.

Graph (``K`` blocks): label check ``K``; ``D_b`` ``K`` and their tree sum
``K + O(log K)`` (only when ``D`` depends on the labels); the kernel ``K``
(one task reads each scores block once, in place, and yields ``(dscores_b,
rows_b)``); two getters ``2K``; the loss tree sum ``K + O(log K)``. At most
about ``8K`` tasks, against ~30 per block for the generic code on Dask
arrays.

Inside a task the chunk is a concrete array, and the engine for its own type
is chosen there (:func:`xsoftmax._engines.select_engine` with "auto"): the
fused NumPy engine on CPU chunks, the CuPy engine on CuPy-backed chunks
(dask-cuda), the reference code for any other chunk type. The NumPy engine
runs on one thread per task: Dask already runs one task per core, and its
own threads on top oversubscribe the cores (the Dask nanny sets
``OMP_NUM_THREADS=1`` on workers for the same reason; on a busy 2-core
machine with two 1-thread workers it halved the median time of a
262144×1024 step). ``XSOFTMAX_NUM_THREADS`` set on the workers overrides it.
"""

from __future__ import annotations

import functools
import operator
import os
from typing import Any

from .._backend import array_namespace, backend_name
from .._dtypes import compute_dtype
from .._reduction import LossInputs, is_probability, mean_denominator
from .._typing import Array, DType

__all__ = ["softmax_loss"]


def softmax_loss(inp: LossInputs, /, *, out: Array | None = None) -> tuple[Array, Array]:
    r"""``softmax_loss`` for Dask arrays; lazy until computed.

    Same values and gradients as the reference engine (see
    :mod:`xsoftmax._reduction`), with every option (probability targets
    chunked like the scores, z-loss, softcap). ``dscores`` is chunked like
    the scores; ``loss`` is 0-d ("mean", "sum") or ``(N,)`` chunked like the
    rows ("none"). Scores with all ``C`` classes of a row in one chunk run
    each block's own engine once; scores chunked along the class axis too
    merge per-block row states across the class chunks
    (:mod:`xsoftmax._engines._dask_classes`). Out-of-range labels raise
    ``ValueError`` naming the global row when the result is computed.
    """
    if out is not None:
        raise TypeError("out= needs a mutable array; dask arrays are not writable in place")
    s = inp.scores
    probabilities = is_probability(inp)
    # Labels follow the scores' row chunks, probabilities the scores' chunks (no-ops when they match).
    y = inp.y.rechunk(s.chunks if probabilities else (s.chunks[0],))
    w = None if inp.weight is None else inp.weight.rechunk(-1)
    cdt = compute_dtype(inp.xp, s.dtype)
    denoms = _global_denominators(inp, y, w, cdt)
    if s.numblocks[1] > 1:
        from ._dask_classes import softmax_loss_class_chunked

        return softmax_loss_class_chunked(inp, s, y, w, denoms, cdt)
    return _row_chunked(inp, s, y, w, denoms, cdt)


def _global_denominators(inp: LossInputs, y: Array, w: Array | None, cdt: DType) -> list[Array]:
    """The whole batch's 0-d ``D`` (and ``V`` with z-loss) for "mean"; ``[]`` otherwise.

    ``D = N`` and ``V = N`` need no labels when every row counts (so the
    kernels need not wait for a pass over them); otherwise one task per label
    block, then a tree sum. Probabilities: ``D = V = N`` (counted from a
    column of ``y`` when the row chunk sizes are unknown).
    """
    if inp.reduction != "mean":
        return []
    if is_probability(inp):
        rows = y[:, 0]
        n = mean_denominator(
            inp.xp, rows, weight=None, ignore_index=None, dtype=cdt,
            blockwise=functools.partial(_blockwise_sum, rows, None, cdt),
        )  # fmt: skip
        return [n, n] if inp.z_loss else [n]
    ii = inp.ignore_index
    denom = mean_denominator(
        inp.xp, y, weight=w, ignore_index=ii, dtype=cdt,
        blockwise=functools.partial(_blockwise_sum, y, w, cdt),
    )  # fmt: skip
    if not inp.z_loss:
        return [denom]
    zdenom = (
        denom
        if w is None
        else mean_denominator(
            inp.xp, y, weight=None, ignore_index=ii, dtype=cdt,
            blockwise=functools.partial(_blockwise_sum, y, None, cdt),
        )
    )  # fmt: skip
    return [denom, zdenom]


def _row_chunked(
    inp: LossInputs, s: Array, y: Array, w: Array | None, denoms: list[Array], cdt: DType
) -> tuple[Array, Array]:
    """Scores with all classes of a row in one chunk: one call of the chunk's engine per row block."""
    import dask.array as da

    c = s.shape[1]
    probabilities = is_probability(inp)
    options = dict(
        num_classes=c,
        ignore_index=inp.ignore_index,
        label_smoothing=inp.label_smoothing,
        reduction=inp.reduction,
        compute_dtype=cdt,
        z_loss=inp.z_loss,
        softcap=inp.softcap,
    )
    args: list[Any] = [s, "ij", y, "ij" if probabilities else "i"]
    if w is not None:
        args += [w, "j"]
    for denom in denoms:
        args += [denom, ()]
    meta2 = s._meta
    meta1 = _meta_1d(s)
    # The class axis j is contracted away but holds one block, so the kernel
    # gets [s_block] and [w] lists; concatenate=True would hand it a fresh
    # copy of every scores block instead (np.concatenate of one array).
    pair = da.blockwise(
        _block_kernel,
        "i",
        *args,
        token="xsoftmax-softmax-loss",
        concatenate=False,
        meta=(meta2, meta1),
        has_weight=w is not None,
        **options,
    )
    dscores = da.blockwise(
        operator.itemgetter(0),
        "ij",
        pair,
        "i",
        new_axes={"j": c},
        token="xsoftmax-dscores",
        meta=meta2,
    )
    # "none": the row losses; otherwise each block's sum, one value per block.
    rows = da.blockwise(
        operator.itemgetter(1),
        "i",
        pair,
        "i",
        adjust_chunks=None if inp.reduction == "none" else {"i": 1},
        token="xsoftmax-row-loss",
        meta=meta1,
    )
    if inp.reduction == "none":
        return rows, dscores
    # Block totals (each already divided by D for "mean") are added in the
    # compute dtype: a float16 running sum loses digits, then overflows.
    total = rows.sum(dtype=cdt)
    return total.astype(s.dtype), dscores


def _meta_1d(s: Array) -> Array:
    from dask.array.utils import meta_from_array

    return meta_from_array(s._meta, ndim=1)


def _blockwise_sum(y: Array, w: Array | None, cdt: DType, block_sum: Any) -> Array:
    """``Σ_b block_sum(y_b, w)`` as a 0-d Dask array: one task per label block, then a tree sum."""
    import dask.array as da

    args: list[Any] = [y, "i"] + ([w, "j"] if w is not None else [None, None])
    partial = da.blockwise(
        block_sum,
        "i",
        *args,
        token="xsoftmax-mean-denominator",
        adjust_chunks={"i": 1},
        concatenate=True,
        meta=_meta_1d(y).astype(cdt),
    )
    return partial.sum()


def _block_kernel(
    s: list[Array],
    y: Array,
    *extra: Any,
    has_weight: bool,
    num_classes: int,
    ignore_index: int | None,
    label_smoothing: float,
    reduction: str,
    compute_dtype: DType,
    z_loss: float,
    softcap: float | None,
) -> tuple[Array, Array]:
    """``(dscores_b, rows_b)`` of one row block, from one call of its chunk engine.

    ``s`` is ``[scores_b]``, ``y`` the labels or ``[probabilities_b]``, and
    ``extra`` holds ``[weight]`` (if any), then the 0-d ``D`` and, with
    z-loss, ``V`` (for "mean"): one-block lists along the class axis.
    ``rows_b`` are the per-row losses ("none"), or their sum as a ``(1,)``
    array, already divided by ``D`` for "mean" (module docstring).
    """
    (s,) = s
    xp = array_namespace(s)
    # Labels or weights backed by another chunk type (NumPy next to CuPy
    # scores) follow the scores onto their device.
    y = xp.asarray(y[0] if isinstance(y, list) else y)
    w = xp.asarray(extra[0][0]) if has_weight else None
    denoms = [xp.astype(xp.asarray(d), compute_dtype) for d in extra[1 if has_weight else 0 :]]
    denom = denoms[0] if denoms else None
    zdenom = denoms[1] if len(denoms) > 1 else None
    # "mean" and "sum" add the block's row losses inside the chunk engine, in
    # the compute dtype, and round only the block's total to the input dtype:
    # float16 row shares row_i / D would each round (to subnormals, or to 0
    # for large N) before being added.
    inp = LossInputs(
        xp, s, y, w, ignore_index, label_smoothing, reduction, False, denom, backend_name(xp),
        z_loss, softcap, zdenom,
    )  # fmt: skip
    rows, d = _chunk_engine(inp.backend)(inp)
    if reduction != "none":
        rows = xp.reshape(xp.asarray(rows), (1,))
    return d, rows


def _chunk_engine(backend: str) -> Any:
    """The "auto" engine of the chunk's namespace; the NumPy engine on one thread.

    See the module docstring for why one thread; an explicit
    ``XSOFTMAX_NUM_THREADS`` on the worker wins.
    """
    from . import select_engine

    engine = select_engine(backend, "auto")
    if backend == "numpy":
        from . import numpy as numpy_engine

        if engine is numpy_engine.softmax_loss and numpy_engine.NUM_THREADS_ENV not in os.environ:
            return functools.partial(engine, num_threads=1)
    return engine
