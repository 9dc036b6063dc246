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
import math
import operator
import os
import warnings
from typing import Any

from .._backend import array_namespace, backend_name
from .._dtypes import compute_dtype
from .._reduction import LossInputs, mean_denominator
from .._typing import Array, DType

__all__ = ["softmax_loss"]


def softmax_loss(inp: LossInputs, /, *, out: Array | None = None) -> tuple[Array, Array]:
    r"""``softmax_loss`` for row-chunked Dask arrays; lazy until computed.

    Same values and gradients as the reference engine (see
    :mod:`xsoftmax._reduction`). ``dscores`` is chunked like the scores'
    rows with all ``C`` classes in one chunk; ``loss`` is 0-d ("mean",
    "sum") or ``(N,)`` chunked like the rows ("none"). A scores array split
    along the class axis is rechunked, with a ``PerformanceWarning``: the
    result is right, but the rechunk moves data between workers, so create
    scores with ``chunks=(rows, -1)`` instead. Out-of-range labels raise
    ``ValueError`` naming the global row when the result is computed.
    """
    if inp.z_loss or inp.softcap is not None or inp.y.ndim == 2:  # issue 15 options: reference for now
        from .reference import softmax_loss as reference  # (guard to be replaced by this engine's owner)

        return reference(inp, out=out)
    import dask.array as da

    if out is not None:
        raise TypeError("out= needs a mutable array; dask arrays are not writable in place")
    s = _rows_chunked(inp.scores)
    c = s.shape[1]
    y = inp.y.rechunk((s.chunks[0],))  # a no-op when the labels already match
    w = None if inp.weight is None else inp.weight.rechunk(-1)
    cdt = compute_dtype(inp.xp, s.dtype)
    options = dict(
        num_classes=c,
        ignore_index=inp.ignore_index,
        label_smoothing=inp.label_smoothing,
        reduction=inp.reduction,
        compute_dtype=cdt,
    )

    args: list[Any] = [s, "ij", y, "i"]
    if w is not None:
        args += [w, "j"]
    if inp.reduction == "mean":
        # D = N needs no labels, so the kernels need not wait for a pass over
        # them; otherwise one task per label block, then a tree sum.
        denom = mean_denominator(
            inp.xp,
            y,
            weight=w,
            ignore_index=inp.ignore_index,
            dtype=cdt,
            blockwise=functools.partial(_blockwise_sum, y, w, cdt),
        )
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


def _rows_chunked(s: Array) -> Array:
    """``s`` with all classes of a row in one chunk."""
    from dask.array.core import PerformanceWarning

    if s.numblocks[1] == 1:
        return s
    warnings.warn(
        f"scores is chunked along the class axis (column chunks {s.chunks[1]}); the Dask "
        f"engine needs all C = {s.shape[1]} classes of a row in one chunk and rechunks "
        f"scores to chunks=('auto', -1), which moves data between workers. Create scores "
        f"with chunks=(rows, -1) to avoid this.",
        PerformanceWarning,
        stacklevel=4,
    )
    # Merging the column chunks multiplies the bytes per chunk; "auto" rows
    # bring them back near dask's array.chunk-size (impossible when the row
    # chunk sizes are unknown, which then stay as they are).
    known = not any(math.isnan(size) for size in s.chunks[0])
    return s.rechunk({0: "auto", 1: -1} if known else {1: -1})


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
) -> tuple[Array, Array]:
    """``(dscores_b, rows_b)`` of one row block, from one call of its chunk engine.

    ``s`` is ``[scores_b]`` and ``extra`` holds ``[weight]`` (if any), then
    the 0-d ``D`` (for "mean"): one-block lists along the class axis.
    ``rows_b`` are the per-row losses ("none"), or their sum as a ``(1,)``
    array, already divided by ``D`` for "mean" (module docstring).
    """
    (s,) = s
    xp = array_namespace(s)
    # Labels or weights backed by another chunk type (NumPy next to CuPy
    # scores) follow the scores onto their device.
    y = xp.asarray(y)
    w = xp.asarray(extra[0][0]) if has_weight else None
    denom = None
    if reduction == "mean":
        denom = xp.astype(xp.asarray(extra[-1]), compute_dtype)
    # "mean" and "sum" add the block's row losses inside the chunk engine, in
    # the compute dtype, and round only the block's total to the input dtype:
    # float16 row shares row_i / D would each round (to subnormals, or to 0
    # for large N) before being added.
    inp = LossInputs(
        xp, s, y, w, ignore_index, label_smoothing, reduction, False, denom, backend_name(xp)
    )
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
