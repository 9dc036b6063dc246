r"""The NumPy engine: softmax cross-entropy, forward and backward, in cache-sized blocks.

The rows are cut into *tasks* of up to a few thousand rows, shared out among
threads (NumPy releases the GIL inside its loops). A task makes its passes
over its ``(rows, C)`` data one L2-sized *block* at a time, and its
row-vector work once for all its rows. In the notation of
:mod:`xsoftmax._reduction`, a block (:func:`_block`) makes

1. ``z_ik ← s_ik log2(e)`` (float16 widened to float32)   reads ``s`` from memory
2. ``u_i = ln 2 · Σ_k w_k (z_ik − z_{i,y_i})`` (label smoothing only)
3. ``e_ik = 2^{z_ik} = exp(s_ik)``; ``σ_i = Σ_k e_ik``; ``e_{i,y_i}``
4. ``d_ik = e_ik · c_i / σ_i − a_i 1[k = y_i] − b_i w_k``

and the task then (5) shifts the rows whose ``σ_i`` is out of range by their
maximum and redoes their blocks (rarely: :func:`_shift_rows`), (6) takes
``l_i − t_i = log(σ_i / e_{i,y_i})`` (:func:`_target_terms`) and the row losses.

``z`` is the block of the output itself, so only step 1 touches main memory
(scratch blocks only for float16, ``out=scores`` and a non-C-contiguous
``out``; :func:`_plan`). No ``exp(s − max s)``: the loss does not depend on
the shift (``docs/math.md``), so rows whose ``Σ_k exp(s_ik)`` stays in range
need none (:data:`SUM_RANGE`); ``2^{s log2 e}`` is NumPy's fastest float32
exponential. Coefficients and the whole batch's "mean" ``D`` come from
:mod:`xsoftmax._reduction` (0-d coefficients without weights and ``ignore_index``).

Determinism: every quantity of row ``i`` comes from row ``i`` alone, in an
order independent of its block and thread; row losses and ``D`` are summed
in fixed chunks of :data:`CHUNK_ROWS` rows, then over the chunks in order:
the bits are the same for every thread count and block size. Threads:
``num_threads``, else ``XSOFTMAX_NUM_THREADS``, else the CPUs this process may
use, fewer for short rows. Measurements behind the constants:
``docs/backends.md``, "NumPy engine tuning".
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from .._dtypes import compute_dtype
from .._reduction import (
    LossInputs,
    RowCoefficients,
    mean_denominator,
    mean_of_total,
    row_coefficients,
    row_loss,
)
from .._validate import check_positive_int
from . import _numpy_extras as extras
from ._numpy_pool import (
    BLOCK_BYTES,
    CHUNK_ROWS,
    MAX_BLOCK_ROWS,
    MIN_SCRATCH_BYTES,
    NUM_THREADS_ENV,
    SCRATCH_SHARE,
    THREAD_BYTES,
    ChunkSums,
    default_num_threads,
    run_on_threads,
)
from ._numpy_rows import STORE_CHUNK, column_fold, row_sum, same_view, store, ufunc_bufsize

__all__ = ["NUM_THREADS_ENV", "default_num_threads", "softmax_loss"]


#: Fewest rows of a short-row block: a few KB of row vectors, even when threads take the budget.
MIN_BLOCK_ROWS = 256
#: Row-vector bytes per row being worked on (σ then l; e_y then t; the target index; c/σ; losses).
ROW_VECTOR_BYTES = 20
#: More bytes a row with per-row coefficients (v, v·w_y, α, β, a, b, c, safe labels).
COEFFICIENT_BYTES = 32
#: Bytes of the buffer for ``b_i w_k`` (weighted label smoothing), filled in row chunks.
OUTER_BYTES = 16 * 1024
#: Classes up to which rows are short: NumPy calls go per row, row maxima by columns.
SMALL_C = 48
#: Short rows gain from another thread only with blocks of at least this many rows each.
SHORT_ROWS_PER_THREAD = 12288
#: Unshifted rows keep ``Σ_k exp(s_ik)`` in ``[1/SUM_RANGE, SUM_RANGE]``: no overflow, normal
#: largest terms, and ``|s| ≤ ln SUM_RANGE`` so rounding ``s log2 e`` costs a few float32 ulps.
SUM_RANGE = 2.0**24
#: Elements (N·C) up to which a call runs on the caller's thread in one block, unplanned: a second
#: thread costs more than it saves there.
SMALL_WORK = 32768


_COMPUTE_DTYPES = {np.dtype(t): np.dtype(compute_dtype(np, np.dtype(t))) for t in "efd"}
_finfo = functools.cache(np.finfo)
_LOG_CONSTANTS = {dt: (dt.type(1 / math.log(2)), dt.type(math.log(2))) for dt in _COMPUTE_DTYPES.values()}


class _Plan(NamedTuple):
    """How a call is cut up: none of it changes a bit of the results."""

    threads: int
    block_rows: int  # rows per cache block
    task_rows: int  # rows per task: whole blocks
    direct: bool  # compute in `out` itself (a C-contiguous compute-dtype array)
    in_place: bool  # `out` is the scores: a task stores its block once done reading them


class _Problem(NamedTuple):
    """What every task reads (shared, read-only) and where it writes."""

    inp: LossInputs  # the options; y, weight (compute dtype) and D as NumPy arrays
    scores: np.ndarray  # (N, C), any layout; written only when it is `out`
    out: np.ndarray  # (N, C) gradient, in the scores' dtype
    row_losses: np.ndarray | None  # (N,) output of reduction="none"
    sums: ChunkSums | None  # the row losses' sum otherwise
    cdt: np.dtype  # compute dtype
    plan: _Plan
    shared: RowCoefficients | None  # 0-d coefficients, when every row has the same
    log2e: np.floating  # log2(e) and ln(2) in the compute dtype
    ln2: np.floating


def softmax_loss(
    inp: LossInputs, /, *, out: np.ndarray | None = None, num_threads: int | None = None,
    block_rows: int | None = None,
) -> tuple[Any, np.ndarray]:
    r"""``(loss, dscores)`` of softmax cross-entropy for NumPy arrays.

    ``inp`` comes from :func:`xsoftmax._validate.check_loss_inputs`. The
    gradient is written into ``out`` when given (``out`` may be the scores
    themselves), else into one new array. ``num_threads`` defaults to
    :func:`default_num_threads`; ``block_rows`` (rows per block) to about
    :data:`BLOCK_BYTES` of scores within the scratch budget (:func:`_plan`).
    Neither changes a bit of the results. Probability targets, z-loss and
    softcap go to :mod:`._numpy_extras`.
    """
    if extras.uses_extras(inp):  # probability targets, z-loss, softcap
        return extras.softmax_loss_extras(inp, out, num_threads, block_rows)
    scores = np.asarray(inp.scores)
    n, c = scores.shape
    cdt = _COMPUTE_DTYPES.get(scores.dtype) or np.dtype(compute_dtype(np, scores.dtype))
    if num_threads is not None:
        num_threads = check_positive_int(num_threads, "num_threads")
    final = None  # a caller's `out` that cannot be written block by block
    if out is None:
        out = np.empty((n, c), dtype=scores.dtype)
    elif np.may_share_memory(out, scores) and not same_view(out, scores):
        # Rows of `out` overlap other rows of the scores: one block could
        # overwrite scores that another has yet to read.
        final, out = out, np.empty((n, c), dtype=scores.dtype)
    y = np.asarray(inp.y)
    # A copy, also when the dtype matches: `out` may alias the caller's weights.
    weight = None if inp.weight is None else np.array(inp.weight, dtype=cdt)
    plan = _plan(inp, out, scores, cdt, num_threads, block_rows)
    uniform = weight is None and inp.ignore_index is None  # every row: the same 0-d coefficients
    shared = denom = None
    if uniform and n and inp.denom is None:
        shared = _uniform_coefficients(cdt, inp.label_smoothing, c, inp.reduction, n)
        denom = shared.denom
    elif inp.reduction == "mean":  # given: one block of a larger batch (the Dask engine)
        denom = mean_denominator(
            np, y, weight=weight, ignore_index=inp.ignore_index, dtype=cdt, chunk_rows=CHUNK_ROWS
        ) if inp.denom is None else np.asarray(inp.denom, dtype=cdt)
    # Plain NumPy for the coefficients: array-api-compat's wrappers cost more than the rows here.
    inp = inp._replace(xp=np, y=y, weight=weight, denom=denom)
    if uniform and n and shared is None:
        shared = row_coefficients(inp, cdt)
    sums = None if inp.reduction == "none" else ChunkSums(n, cdt, CHUNK_ROWS)
    row_losses = np.empty(n, dtype=scores.dtype) if sums is None else None
    log2e, ln2 = _LOG_CONSTANTS.get(cdt) or (cdt.type(1 / math.log(2)), cdt.type(math.log(2)))
    prob = _Problem(inp, scores, out, row_losses, sums, cdt, plan, shared, log2e, ln2)
    _run_tasks(prob)

    if prob.sums is None:
        loss = prob.row_losses
    else:
        loss = np.asarray(prob.sums.total())  # a 0-d array, not NumPy's scalar
        if denom is not None:
            loss = mean_of_total(np, loss, denom)  # NaN when D = 0, as PyTorch
        if loss.dtype != scores.dtype:
            with np.errstate(over="ignore"):  # a float16 sum past 65504 is inf, as "none" rows are
                loss = loss.astype(scores.dtype)
    if final is not None:
        np.copyto(final, out)
        out = final
    return loss, out


@functools.lru_cache(maxsize=64)
def _uniform_coefficients(cdt: np.dtype, eps: float, c: int, reduction: str, n: int) -> RowCoefficients:
    """The 0-d coefficients of ``n`` rows without class weights or ``ignore_index`` (read-only):
    they depend on these five values only, so a training loop's minibatches share them."""
    rows = np.broadcast_to(np.intp(0), (n,))  # n labels, none read
    denom = mean_denominator(np, rows, weight=None, ignore_index=None, dtype=cdt)
    inputs = LossInputs(np, np.empty((0, c), cdt), rows, None, None, eps, reduction, False, denom)
    coef = row_coefficients(inputs, cdt)
    for v in coef:
        if isinstance(v, np.ndarray):
            v.setflags(write=False)
    return coef


def _plan(
    inp: LossInputs, out: np.ndarray, scores: np.ndarray, cdt: np.dtype, num_threads: int | None,
    block_rows: int | None,
) -> _Plan:
    """Threads, rows per block and per task, and where blocks are computed.

    All scratch (per thread: buffers; per row worked on: row vectors, and a
    row in scratch blocks) within :data:`SCRATCH_SHARE` of the gradient. Short
    rows: fewer threads, one block per task, of whole loss chunks where four
    fit. Others: :data:`BLOCK_BYTES` blocks, tasks of whole blocks, 4+ per thread.
    Up to :data:`SMALL_WORK` elements (no knob or variable set): this thread, one block.
    """
    n, c = out.shape
    in_place = same_view(out, scores)
    # Compute in `out` itself, unless it is the scores (whose rows a task
    # reads again after its blocks, for shifts and far-off targets) or not a
    # C-contiguous compute-dtype array.
    direct = out.dtype == cdt and out.flags.c_contiguous and not in_place
    tune_threads = num_threads is None and not os.environ.get(NUM_THREADS_ENV, "").strip()
    if tune_threads and block_rows is None and n * c <= SMALL_WORK:
        return _Plan(1, max(n, 1), max(n, 1), direct, in_place)
    threads = default_num_threads() if num_threads is None else num_threads
    weighted = inp.weight is not None
    budget = max(SCRATCH_SHARE * out.nbytes, MIN_SCRATCH_BYTES)
    per_thread = THREAD_BYTES + (OUTER_BYTES if weighted and inp.label_smoothing else 0)
    per_thread += 0 if direct else STORE_CHUNK * 9  # _to_float16's temporaries
    vectors = ROW_VECTOR_BYTES + (8 if inp.label_smoothing else 0)
    vectors += COEFFICIENT_BYTES if weighted or inp.ignore_index is not None else 0
    row = c * cdt.itemsize
    per_row = vectors + (0 if direct else row)
    if block_rows is None:
        if tune_threads and c <= SMALL_C:
            threads = max(1, min(threads, int(budget // (per_thread + SHORT_ROWS_PER_THREAD * per_row))))
        rows = int((budget - threads * per_thread) // (threads * per_row))
        if c > SMALL_C:
            block_rows = max(1, min(MAX_BLOCK_ROWS, BLOCK_BYTES // row, rows))
        else:
            block_rows = max(1, min(MAX_BLOCK_ROWS, BLOCK_BYTES // row, max(rows, MIN_BLOCK_ROWS)))
            unit = CHUNK_ROWS if block_rows >= 4 * CHUNK_ROWS else 1  # whole chunks, or rows
            units = -(-n // unit)
            if units:
                rounds = -(-units // (threads * (block_rows // unit)))  # blocks per thread
                block_rows = unit * -(-units // (threads * rounds))
    block_rows = min(check_positive_int(block_rows, "block_rows"), max(n, 1))
    task_rows = block_rows
    if c > SMALL_C and not in_place:
        block = 0 if direct else block_rows * row  # a thread's scratch block
        room = int((budget - threads * (per_thread + block)) // (threads * vectors))
        rows = min(-(-n // (4 * threads)), MAX_BLOCK_ROWS, room)
        task_rows = max(1, rows // block_rows) * block_rows
    return _Plan(threads, block_rows, task_rows, direct, in_place)


class _Scratch:
    """One thread's block buffers, allocated once per call and reused by its tasks."""

    def __init__(self, prob: _Problem) -> None:
        shape = (prob.plan.block_rows, prob.out.shape[1])
        self.vec = np.empty(shape[0], dtype=prob.cdt)  # c_i / σ_i, or the row maxima m_i
        # The block itself, unless it is computed in the output.
        self.work: Any = None if prob.plan.direct else np.empty(shape, dtype=prob.cdt)
        # b_i w_k (weighted label smoothing), made a few rows at a time.
        weighted_smoothing = prob.inp.label_smoothing and prob.inp.weight is not None
        outer_rows = max(1, min(shape[0], OUTER_BYTES // (shape[1] * prob.cdt.itemsize)))
        self.outer: Any = np.empty((outer_rows, shape[1]), prob.cdt) if weighted_smoothing else None


class _Task(NamedTuple):
    """One task's rows ``r0:r0 + n`` and their row vectors (blocks fill them)."""

    r0: int
    coef: RowCoefficients  # (n,) or 0-d
    labels: np.ndarray  # (n,) intp, ignored rows: any class
    se: np.ndarray  # σ_i = Σ_k e_ik
    ey: np.ndarray  # e_{i,y_i}
    u: np.ndarray | None  # label smoothing's u_i
    scratch: _Scratch


def _at(v: Any, rows: slice) -> Any:
    """The rows ``rows`` of a coefficient (a 0-d one is the same for all rows)."""
    return v[rows] if v.ndim else v


def _run_task(prob: _Problem, r0: int, r1: int, scratch: _Scratch) -> None:
    """Rows ``r0:r1``: the ``(n, C)`` passes by cache block, then the row-vector work once.

    Blocks leave ``σ_i`` and ``e_{i,y_i}`` in task vectors (wide rows make
    blocks of a few rows: every NumPy call a block saves is one fewer under
    the GIL); then shifts (:func:`_shift_rows`) and the row losses.
    """
    y = prob.inp.y[r0:r1]
    coef = prob.shared if prob.shared is not None else row_coefficients(prob.inp._replace(y=y), prob.cdt)
    if coef.valid is None:  # no ignore_index
        labels = y.astype(np.intp, copy=False)
    else:
        labels = np.where(coef.valid, y, 0).astype(np.intp)  # ignored rows: any class
    n, cdt = r1 - r0, prob.cdt
    u = np.empty(n, dtype=cdt) if prob.inp.label_smoothing else None
    task = _Task(r0, coef, labels, np.empty(n, dtype=cdt), np.empty(n, dtype=cdt), u, scratch)
    step = prob.plan.block_rows
    blocks = [slice(b0, min(b0 + step, n)) for b0 in range(0, n, step)]
    for rows in blocks:
        _block(prob, task, rows)
    shift = _shift_rows(prob, task, blocks)
    l, t = _target_terms(prob, task, shift)  # noqa: E741 (the l of the docstring)
    if prob.plan.in_place:  # one block, computed in scratch: the scores are read no more
        store(scratch.work[:n], prob.out[r0:r1])
    losses = row_loss(np, coef, l, t, task.u)  # NumPy itself: fewer wrapper layers per block
    if prob.row_losses is not None:
        prob.row_losses[r0:r1] = losses
    elif prob.sums is not None:
        prob.sums.add(r0, losses)


def _block(prob: _Problem, task: _Task, rows: slice, shift: np.ndarray | None = None) -> None:
    """Steps 1–4 of the module docstring for the task's rows ``rows``, shifted by ``shift`` (None: 0).

    Writes ``σ_i``, ``e_{i,y_i}`` and ``u_i`` into the task's vectors; a row
    whose ``σ_i`` turns out out of range has its block redone (:func:`_shift_rows`).
    """
    coef, scratch, direct = task.coef, task.scratch, prob.plan.direct
    start, stop = task.r0 + rows.start, task.r0 + rows.stop
    n = stop - start
    s = prob.scores[start:stop]
    z = prob.out[start:stop] if direct else scratch.work[:n]
    flat = z.reshape(-1)  # a view: z is C-contiguous
    target = np.arange(0, z.size, z.shape[1], dtype=np.intp)  # flat index of y_i in z
    target += task.labels[rows]
    if shift is None:
        np.multiply(s, prob.log2e, out=z, dtype=prob.cdt)  # also the float16 -> float32 cast
    else:
        np.subtract(s, shift[rows, None], out=z, dtype=prob.cdt)
        np.multiply(z, prob.log2e, out=z)
    if task.u is not None:
        # u_i = Σ_k w_k (s_ik − s_{i,y_i}) = ln 2 · (Σ_k w_k z_ik − W z_{i,y_i}):
        # relative to the target logit, like the loss, so that C = 1 gives 0.
        u_block = row_sum(z, task.u[rows], prob.inp.weight)
        zy = np.take(flat, target, out=scratch.vec[:n], mode="clip")  # vec: free until step 4
        u_block -= np.multiply(zy, coef.wsum, out=zy)
        u_block *= prob.ln2
    np.exp2(z, out=z)
    se, ey = task.se[rows], task.ey[rows]
    row_sum(z, se)
    np.take(flat, target, out=ey, mode="clip")  # in range ("raise" would buffer)
    r = np.divide(_at(coef.c, rows), se, out=scratch.vec[:n])
    np.multiply(z, r[:, None], out=z)
    # d_{i,y_i} = e_{i,y_i} c_i / σ_i − a_i, the same product as the line above
    # makes, then stored by index (np.subtract.at would hold the GIL).
    dy = np.multiply(ey, r, out=r)
    dy -= _at(coef.a, rows)
    flat[target] = dy
    if coef.b is not None:
        if prob.inp.weight is None:
            np.subtract(z, coef.b if coef.b.ndim == 0 else coef.b[rows, None], out=z)
        else:  # z −= b ⊗ w, a few rows at a time
            b, k = coef.b[rows], len(scratch.outer)
            for i in range(0, n, k):
                bw = np.multiply(b[i : i + k, None], prob.inp.weight, out=scratch.outer[: n - i])
                np.subtract(z[i : i + k], bw, out=z[i : i + k])
    if not (direct or prob.plan.in_place):  # (in place, the task stores the block)
        store(z, prob.out[start:stop])


def _shift_rows(prob: _Problem, task: _Task, blocks: list[slice]) -> np.ndarray | None:
    """Shift the rows whose ``σ_i`` is out of range and redo their blocks; the shifts.

    None (all 0) when every ``σ_i`` is in ``[1/SUM_RANGE, SUM_RANGE]``. A row
    out of range (or NaN) is shifted by its maximum (0 if not finite, as in
    the reference engine); its block's other rows keep shift 0, so the same
    bits: whether a row is shifted depends on that row alone.
    """
    se, lo, hi = task.se, 1 / SUM_RANGE, SUM_RANGE
    # Two reductions decide the usual case (comparisons with NaN are False).
    if np.minimum.reduce(se) >= lo and np.maximum.reduce(se) <= hi:
        return None
    out_of_range = ~((se >= lo) & (se <= hi))  # also True for NaN
    shift = np.zeros_like(se)
    for rows in blocks:
        if not out_of_range[rows].any():
            continue
        s = prob.scores[task.r0 + rows.start : task.r0 + rows.stop]
        m = task.scratch.vec[: len(s)]
        if s.shape[1] <= SMALL_C:
            column_fold(np.maximum, s, m)
        else:
            np.maximum.reduce(s, axis=1, out=m)
        shifted = out_of_range[rows] & np.isfinite(m)
        if shifted.any():
            np.copyto(shift[rows], m, where=shifted)
            _block(prob, task, rows, shift)
    return shift


def _target_terms(prob: _Problem, task: _Task, shift: np.ndarray | None) -> tuple[np.ndarray, Any]:
    """``(l, t)`` of a task's rows (``u`` fixed up), written over ``task.se`` and ``task.ey``.

    With ``e_ik = exp(s_ik − m_i)`` (``m = shift``, None: 0): where
    ``e_{i,y_i}`` is normal the row is re-shifted by its target logit,
    ``l_i = log(σ_i / e_{i,y_i})`` and ``t_i = 0``, so the rounding of
    ``e_{i,y_i}`` (also a term of ``σ_i``) cancels: 0 for C = 1, accurate for
    confident rows. Elsewhere (target far below the maximum, −inf, NaN, an
    overflowing ratio) ``l_i = log σ_i``, ``t_i = s_{i,y_i} − m_i`` and ``u``
    relative to ``m_i`` (:func:`_exact_smoothing_sums`). ``t`` None: all 0.
    """
    se, ey, u = task.se, task.ey, task.u
    info = _finfo(se.dtype)
    # The usual case: every target normal and every ratio (and u) finite,
    # known before dividing (max σ / min e_y < half the largest float; False
    # for NaN). Then t = 0, and the scores are not read again. Each row gets
    # the bits it would get below, where it is "normal" (l − 0 is l).
    smallest = np.minimum.reduce(ey)
    if (
        smallest >= info.tiny
        and float(np.maximum.reduce(se)) / float(info.max) < 0.5 * float(smallest)
        and (u is None or -np.inf < np.minimum.reduce(u) and np.maximum.reduce(u) < np.inf)
    ):
        np.divide(se, ey, out=se)
        return np.log(se, out=se), None
    ratio = np.divide(se, ey)
    normal = ey >= info.tiny  # False for 0 and NaN
    normal &= ratio < np.inf  # a far-off target overflows the ratio: the other formula
    t = ey
    s = prob.scores[task.r0 : task.r0 + len(t)]
    t[...] = s[np.arange(len(t)), task.labels]  # s_{i,y_i}, for now
    if u is not None:
        _exact_smoothing_sums(s, prob.inp.weight, normal, t, shift, u)
    if shift is not None:
        t -= shift
    l = np.log(se, out=se)  # noqa: E741
    np.copyto(l, np.log(ratio, out=ratio), where=normal)
    t[normal] = 0
    return l, t


def _exact_smoothing_sums(
    s: np.ndarray,
    w: np.ndarray | None,
    normal: np.ndarray,
    sy: np.ndarray,
    shift: np.ndarray | None,
    u: np.ndarray,
) -> None:
    """Recompute ``u`` from the scores (``w``: class weights or None) where the block's is off.

    That is rows keeping their shift ``m_i`` (``u_i = Σ_k w_k (s_ik − m_i)``)
    and rows whose ``u`` is infinite or NaN (−inf scores, ``s log2 e``
    overflowing); relative to ``s_{i,y_i}`` where the row is normal.
    """
    redo = ~normal | ~np.isfinite(u)
    if not redo.any():
        return
    rows = np.flatnonzero(redo)
    m = np.zeros(len(rows), u.dtype) if shift is None else shift[rows]
    d = s[rows].astype(u.dtype)
    d -= np.where(normal[rows], sy[rows], m)[:, None]
    u[rows] = row_sum(d, np.empty(len(rows), u.dtype), w)


# --------------------------------------------------------------------------- threads

def _run_tasks(prob: _Problem) -> None:
    """Run :func:`_run_task` over all rows on up to ``plan.threads`` threads, the caller's included."""
    n, step = prob.out.shape[0], prob.plan.task_rows
    if 0 < n <= step and not ufunc_bufsize(prob.out.shape[1]):  # one task (a small call): no pool
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # as in work() below
            _run_task(prob, 0, n, _Scratch(prob))
        return
    starts = range(0, n, step)
    threads = min(prob.plan.threads, len(starts))
    tasks: Iterator[int] = iter(starts)
    lock = threading.Lock()

    def work() -> None:
        scratch = _Scratch(prob)
        bufsize = ufunc_bufsize(prob.out.shape[1])
        old_bufsize = np.setbufsize(bufsize) if bufsize else None
        try:
            # An all −inf row gives log 0 and 0 · inf = NaN, as in the
            # reference engine: a result, not a warning.
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                while True:
                    with lock:
                        r0 = next(tasks, None)
                    if r0 is None:
                        return
                    _run_task(prob, r0, min(r0 + step, n), scratch)
        finally:
            if old_bufsize is not None:
                np.setbufsize(old_bufsize)  # per-thread state: leave it as found

    run_on_threads(work, threads)
