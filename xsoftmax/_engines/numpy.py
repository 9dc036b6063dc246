r"""The NumPy engine: softmax cross-entropy, forward and backward, in cache-sized blocks.

The rows of the ``(N, C)`` scores are cut into *tasks* of up to a few
thousand rows, shared out among threads (NumPy releases the GIL inside its
loops). A task computes its rows' coefficients and row losses once, and
makes its passes over the ``(rows, C)`` data one cache *block* at a time,
each block small enough to stay in a core's L2 cache. For one block, in the
notation of :mod:`xsoftmax._reduction`:

1. ``z_i ← s_i`` (float16 widened to float32)             reads ``s`` from memory
2. ``m_i = max_k z_ik`` (0 when not finite); ``z_ik −= m_i``
3. ``t_i = z_{i,y_i}``; ``u_i = Σ_k w_k z_ik`` (label smoothing only)
4. ``e_ik = exp(z_ik)``; ``l_i = log Σ_k e_ik``
5. ``d_ik = e_ik · c_i / Σ_k e_ik − a_i 1[k = y_i] − b_i w_k``

``z`` is the block of the output itself (``out``, or one new array), so only
step 1 touches main memory and every later pass runs in place in cache: the
memory traffic is about that of one copy of the ``(N, C)`` bytes. Scratch of
one block per thread is used only for float16, for weighted label smoothing
and for an ``out`` that is not C-contiguous; with the per-block row vectors
the peak extra memory is the gradient plus a fixed ~1 MB per thread (a few
percent of the gradient for the large batches this engine is for). A new output's
pages are faulted in (:func:`_touch_pages`) at the start of each task, so
the kernel's zeroing of fresh pages does not evict the block mid-way.

Long rows (``C > SMALL_C``): maxima are ``np.maximum.reduce`` along the
contiguous class axis, sums ``np.einsum("ij->i")`` (vectorised, ~3x faster
than ``np.add.reduce``; :func:`_row_reduce`). Row-broadcast operations
(``z −= m[:, None]``) run with a ufunc buffer of at most one row
(:func:`_ufunc_bufsize`).

Short rows (``C ≤ SMALL_C``, many rows): NumPy's per-row loops would cost
tens of nanoseconds per row, so the block is copied transposed into a
``(C, n)`` scratch (:func:`_block_small`); there a per-row reduction is an
elementwise fold over ``C`` contiguous vectors of length ``n`` and every
broadcast runs along ``n``; the finished block is copied back transposed.

Per-row coefficients come from :func:`xsoftmax._reduction.row_coefficients`,
one block at a time; for ``"mean"`` the denominator ``D = Σ_i v_i w_{y_i}``
belongs to the whole batch and is summed first (labels only, no scores).

Determinism: every quantity of row ``i`` is computed from row ``i`` alone, in
an order that does not depend on the block or thread holding it, and row
losses (and ``D``) are summed in fixed chunks of :data:`CHUNK_ROWS` rows, then
over the chunks in order. Results are bitwise identical for every thread
count and block size.

Threads: ``num_threads`` (argument), else the environment variable
``XSOFTMAX_NUM_THREADS``, else the CPUs this process may run on; short rows
(``C ≤ SMALL_C``) default to one thread, as their many short NumPy calls
contend for the GIL.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .._dtypes import compute_dtype
from .._reduction import (
    RowCoefficients,
    label_weights,
    mean_of_total,
    row_coefficients,
    row_loss,
)
from .._typing import ArrayNamespace
from .._validate import LossInputs, check_positive_int

__all__ = ["NUM_THREADS_ENV", "default_num_threads", "softmax_loss"]

#: Environment variable that sets the default number of threads.
NUM_THREADS_ENV = "XSOFTMAX_NUM_THREADS"

#: Bytes of compute-dtype scores per block: half a 2 MiB L2. Measured with two
#: threads, 1 MiB beats 512 KiB by 5-10% at C = 1024 and 32000 and by 30% at
#: C = 131072 (2 rows a block instead of 1: fewer, longer NumPy calls).
BLOCK_BYTES = 1024 * 1024

#: Most rows per block and per task. Each row of a task also carries ~40
#: bytes of row vectors (labels, t, l, coefficients); for C = 10 that is as
#: much as the row itself, and this bound (with SMALL_C_BLOCK_BYTES) keeps
#: it to a few percent of the gradient.
MAX_BLOCK_ROWS = 16384

#: Classes up to which blocks are worked on transposed (:func:`_block_small`).
SMALL_C = 48

#: Bytes of compute-dtype scores per block for ``C ≤ SMALL_C``, shared out
#: among the threads. Such a block needs a transposed scratch copy and its
#: rows carry ~40 bytes of row vectors each, so this keeps the peak extra
#: memory under 1.1x the gradient at C = 10 (10240 rows on one thread, 5120
#: each on two). Bigger blocks are faster (fewer, longer NumPy calls).
SMALL_C_BLOCK_BYTES = 400 * 1024

#: Rows per chunk of the fixed-order sums of row losses and of ``D``.
CHUNK_ROWS = 4096


def default_num_threads() -> int:
    """``XSOFTMAX_NUM_THREADS`` if set, else the number of CPUs this process may use."""
    env = os.environ.get(NUM_THREADS_ENV, "").strip()
    if env:
        return check_positive_int(int(env) if env.isdigit() else env, NUM_THREADS_ENV)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Problem(NamedTuple):
    """What every task reads (shared, read-only) and where it writes."""

    xp: ArrayNamespace
    scores: np.ndarray  # (N, C), any layout; written only when it is `out`
    out: np.ndarray  # (N, C) gradient, in the scores' dtype
    y: np.ndarray  # (N,) labels
    weight: np.ndarray | None  # (C,) in the compute dtype
    ignore_index: int | None
    label_smoothing: float
    reduction: str
    denom: Any  # D of the whole batch for "mean", else None
    row_losses: np.ndarray | None  # (N,) output of reduction="none"
    sums: _ChunkSums | None  # the row losses' sum otherwise
    cdt: np.dtype  # compute dtype
    direct: bool  # compute in `out` itself
    fresh: bool  # `out` was allocated here (its pages not yet touched)
    in_place: bool  # `out` is the scores (then direct too)
    block_rows: int


def softmax_loss(
    inp: LossInputs,
    *,
    out: np.ndarray | None = None,
    num_threads: int | None = None,
    block_rows: int | None = None,
) -> tuple[Any, np.ndarray]:
    r"""``(loss, dscores)`` of softmax cross-entropy for NumPy arrays.

    ``inp`` comes from :func:`xsoftmax._validate.check_loss_inputs`. The
    gradient is written into ``out`` when given (``out`` may be the scores
    themselves), else into one new array. ``num_threads`` defaults to
    :func:`default_num_threads`; ``block_rows`` (rows per block) defaults to
    about :data:`BLOCK_BYTES` of scores. Neither changes a bit of the results.
    """
    xp = inp.xp
    scores = np.asarray(inp.scores)
    n, c = scores.shape
    cdt = np.dtype(compute_dtype(xp, scores.dtype))
    if num_threads is not None:
        threads = check_positive_int(num_threads, "num_threads")
    elif c <= SMALL_C and not os.environ.get(NUM_THREADS_ENV, "").strip():
        # Short rows are bound by NumPy's per-call overhead, which holds the
        # GIL: one thread with twice the block (same memory) measured 10-15%
        # faster than two threads.
        threads = 1
    else:
        threads = default_num_threads()
    if block_rows is None:
        budget = SMALL_C_BLOCK_BYTES // threads if c <= SMALL_C else BLOCK_BYTES
        block_rows = min(MAX_BLOCK_ROWS, max(1, budget // (c * cdt.itemsize)))
    block_rows = min(check_positive_int(block_rows, "block_rows"), max(n, 1))

    final = None  # a caller's `out` that cannot be written block by block
    fresh = out is None
    if out is None:
        out = np.empty((n, c), dtype=scores.dtype)
    elif np.may_share_memory(out, scores) and not _same_view(out, scores):
        # Rows of `out` overlap other rows of the scores: one block could
        # overwrite scores that another has yet to read.
        final, out = out, np.empty((n, c), dtype=scores.dtype)
        fresh = True

    y = np.asarray(inp.y)
    # A copy, also when the dtype matches: `out` may alias the caller's weights.
    weight = None if inp.weight is None else np.array(inp.weight, dtype=cdt)
    direct = out.dtype == cdt and out.flags.c_contiguous
    denom = None
    if inp.reduction == "mean":
        if inp.denom is None:
            denom = _denominator(xp, y, weight, c, inp.ignore_index, cdt)
        else:  # one block of a larger batch (the Dask engine)
            denom = np.asarray(inp.denom, dtype=cdt)
    problem = _Problem(
        xp=xp,
        scores=scores,
        out=out,
        y=y,
        weight=weight,
        ignore_index=inp.ignore_index,
        label_smoothing=inp.label_smoothing,
        reduction=inp.reduction,
        denom=denom,
        row_losses=np.empty(n, dtype=scores.dtype) if inp.reduction == "none" else None,
        sums=None if inp.reduction == "none" else _ChunkSums(n, cdt),
        cdt=cdt,
        direct=direct,
        fresh=fresh,
        in_place=direct and _same_view(out, scores),
        block_rows=block_rows,
    )
    _run_blocks(problem, threads)

    if problem.sums is None:
        loss = problem.row_losses
    else:
        loss = np.asarray(problem.sums.total())  # a 0-d array, not NumPy's scalar
        if denom is not None:
            loss = mean_of_total(np, loss, denom)  # NaN when D = 0, as PyTorch
        with np.errstate(over="ignore"):  # a float16 sum past 65504 is inf, as "none" rows are
            loss = loss.astype(scores.dtype)
    if final is not None:
        np.copyto(final, out)
        out = final
    return loss, out


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """Same memory, element for element (``out=scores``)."""
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.strides == b.strides
        and a.shape == b.shape
    )


def _denominator(xp, y, weight, c, ignore_index, cdt) -> Any:
    """``D = Σ_i v_i w_{y_i}`` of the whole batch, summed in chunks of :data:`CHUNK_ROWS`.

    Chunks keep the label temporaries small and fix the order of the sum.
    """
    parts = np.empty(math.ceil(len(y) / CHUNK_ROWS), dtype=cdt)
    for j in range(len(parts)):
        _, wy = label_weights(
            xp,
            y[j * CHUNK_ROWS : (j + 1) * CHUNK_ROWS],
            num_classes=c,
            weight=weight,
            ignore_index=ignore_index,
            dtype=cdt,
        )
        parts[j] = np.add.reduce(wy)
    return np.add.reduce(parts)


class _ChunkSums:
    """``Σ_i rows_i`` as ``Σ_j (Σ_{i ∈ chunk j} rows_i)`` over fixed chunks of rows.

    Tasks hand in their row losses; a chunk inside one task is summed at
    once, a chunk cut by a task boundary is assembled first. Either way each
    chunk is one ``np.add.reduce`` of the same contiguous values, so the
    total does not depend on the tasks.
    """

    def __init__(self, n: int, dtype: np.dtype) -> None:
        self.n = n
        self.partial = np.empty(math.ceil(n / CHUNK_ROWS), dtype=dtype)
        self.pending: dict[int, np.ndarray] = {}
        self.filled: dict[int, int] = {}  # rows of each pending chunk handed in so far
        self.lock = threading.Lock()

    def add(self, r0: int, rows: np.ndarray) -> None:
        """Row losses of rows ``r0 : r0 + len(rows)``."""
        r1 = r0 + len(rows)
        for j in range(r0 // CHUNK_ROWS, (r1 - 1) // CHUNK_ROWS + 1):
            c0, c1 = j * CHUNK_ROWS, min((j + 1) * CHUNK_ROWS, self.n)
            lo, hi = max(r0, c0), min(r1, c1)
            if lo == c0 and hi == c1:
                self.partial[j] = np.add.reduce(rows[lo - r0 : hi - r0])
                continue
            with self.lock:
                chunk = self.pending.get(j)
                if chunk is None:
                    chunk = self.pending[j] = np.empty(c1 - c0, dtype=self.partial.dtype)
            chunk[lo - c0 : hi - c0] = rows[lo - r0 : hi - r0]
            with self.lock:
                self.filled[j] = self.filled.get(j, 0) + hi - lo
                done = self.filled[j] == c1 - c0
                if done:  # summed now, so pending chunks do not pile up
                    del self.pending[j], self.filled[j]
            if done:
                self.partial[j] = np.add.reduce(chunk)

    def total(self) -> Any:
        """The sum (a NumPy scalar), once every row has been added."""
        assert not self.pending
        return np.add.reduce(self.partial)


# --------------------------------------------------------------------------- blocks


class _Scratch:
    """One thread's block buffers, allocated once per call and reused by its tasks."""

    def __init__(self, p: _Problem) -> None:
        shape = (p.block_rows, p.out.shape[1])
        # w_k z_ik and b_i w_k need a second block buffer.
        weighted_smoothing = p.label_smoothing and p.weight is not None
        self.vec = np.empty(shape[0], dtype=p.cdt)  # m, then Σ_k e_ik
        if shape[1] <= SMALL_C:
            # Short rows: the block is worked on transposed (_block_small).
            self.work_t = np.empty(shape[::-1], dtype=p.cdt)
            self.tmp = np.empty(shape[::-1], dtype=p.cdt) if weighted_smoothing else None
            #: row numbers within a block (int32: scratch counts against the memory bound)
            self.row = np.arange(shape[0], dtype=np.int32)
        else:
            # The block itself, unless it is computed in the output.
            self.work = None if p.direct else np.empty(shape, dtype=p.cdt)
            self.tmp = np.empty(shape, dtype=p.cdt) if weighted_smoothing else None
            #: flat index of the first element of each row of a block
            self.row_start = np.arange(0, shape[0] * shape[1], shape[1], dtype=np.intp)


def _coefficients(p: _Problem, r0: int, r1: int) -> RowCoefficients:
    """The coefficients of rows ``r0:r1``, with the whole batch's "mean" denominator."""
    return row_coefficients(
        p.xp,
        p.y[r0:r1],
        num_classes=p.out.shape[1],
        weight=p.weight,
        ignore_index=p.ignore_index,
        label_smoothing=p.label_smoothing,
        reduction=p.reduction,
        dtype=p.cdt,
        denom=p.denom,
    )


def _task(p: _Problem, r0: int, r1: int, scratch: _Scratch) -> None:
    """Rows ``r0:r1``: coefficients and row losses once, the ``(n, C)`` passes by cache block.

    Wide rows make cache blocks of one to a few rows; the row-vector work
    (a dozen small NumPy calls) is done once per task, not once per block.
    """
    if p.fresh:
        _touch_pages(p.out[r0:r1])
    coef = _coefficients(p, r0, r1)
    if p.ignore_index is None:
        labels = p.y[r0:r1].astype(np.intp, copy=False)
    else:
        labels = np.where(coef.valid, p.y[r0:r1], 0).astype(np.intp)  # ignored rows: any class
    n = r1 - r0
    t = np.empty(n, dtype=p.cdt)
    l = np.empty(n, dtype=p.cdt)  # noqa: E741 (the l of the docstring)
    u = np.empty(n, dtype=p.cdt) if p.label_smoothing else None
    for b0 in range(0, n, p.block_rows):
        rows = slice(b0, min(b0 + p.block_rows, n))
        _block(p, r0 + b0, coef, rows, labels[rows], t[rows], l[rows], u, scratch)
    losses = row_loss(p.xp, coef, l, t, u)
    if p.row_losses is not None:
        p.row_losses[r0:r1] = losses
    else:
        p.sums.add(r0, losses)


def _touch_pages(a: np.ndarray) -> None:
    """Write one element in every 4 KiB of a new C-contiguous array (its page faults, all at once).

    The kernel zeroes each new page (2 MiB ones for big NumPy arrays) when it
    is first written. Faulting a task's rows up front keeps that zeroing from
    evicting the cache block between the passes over it.
    """
    flat = a.reshape(-1)
    flat[:: max(1, 4096 // flat.itemsize)] = 0


def _block(
    p: _Problem,
    start: int,
    coef: RowCoefficients,
    rows: slice,
    labels: np.ndarray,
    t: np.ndarray,
    l: np.ndarray,  # noqa: E741 (the l of the docstring)
    u: np.ndarray | None,
    scratch: _Scratch,
) -> None:
    """Steps 1–5 of the module docstring for the rows ``start : start + len(t)``.

    ``coef``, ``u`` cover the whole task and ``rows`` selects this block's
    part; ``t``, ``l`` (and ``u[rows]``) receive the block's row values.
    """
    n = len(t)
    if p.out.shape[1] <= SMALL_C:
        _block_small(p, start, coef, rows, labels, t, l, u, scratch)
        return
    s = p.scores[start : start + n]
    z = p.out[start : start + n] if p.direct else scratch.work[:n]
    # Copy first (also the float16 -> float32 cast): one streaming read and
    # write, after which the max and the subtraction run in cache. Measured
    # 10-20% faster than a max over `s` followed by `z = s - m`.
    if not p.in_place:
        np.copyto(z, s)
    m = _row_reduce(np.maximum, z, scratch.vec[:n])
    _finite_or_zero(m)
    np.subtract(z, m[:, None], out=z)

    flat = z.reshape(-1)  # a view: z is C-contiguous
    target = scratch.row_start[:n] + labels
    np.take(flat, target, out=t, mode="clip")  # in range; "raise" would buffer `out`
    if u is not None:
        if p.weight is None:
            _row_reduce(np.add, z, u[rows])
        else:
            wz = scratch.tmp[:n]
            np.multiply(z, p.weight, out=wz)
            _row_reduce(np.add, wz, u[rows])

    np.exp(z, out=z)
    se = _row_reduce(np.add, z, scratch.vec[:n])
    np.log(se, out=l)
    np.multiply(z, (coef.c[rows] / se)[:, None], out=z)
    np.subtract.at(flat, target, coef.a[rows])  # one target per row: no index repeats
    if coef.b is not None:
        if p.weight is None:
            np.subtract(z, coef.b[rows, None], out=z)
        else:
            bw = scratch.tmp[:n]
            np.multiply(coef.b[rows, None], p.weight, out=bw)
            np.subtract(z, bw, out=z)
    if not p.direct:
        np.copyto(p.out[start : start + n], z)


def _block_small(
    p: _Problem,
    start: int,
    coef: RowCoefficients,
    rows: slice,
    labels: np.ndarray,
    t: np.ndarray,
    l: np.ndarray,  # noqa: E741 (the l of the docstring)
    u: np.ndarray | None,
    scratch: _Scratch,
) -> None:
    """Steps 1–5 for short rows (``C ≤ SMALL_C``), on the block transposed.

    In ``(n, C)`` layout every NumPy call would loop over ``n`` rows of
    ``C`` elements (per-row reductions, ``z −= m[:, None]``), paying the
    inner-loop overhead ``n`` times. In ``zt = zᵀ`` (``(C, n)``, C-contiguous)
    a per-row reduction is a fold of the ``C`` rows of ``zt``, ``C − 1``
    contiguous vector operations of length ``n`` in the fixed order
    ``((z_0 op z_1) op z_2) …``, and every broadcast runs along ``n``. The
    transposed copies in and out cost about one strided pass each.
    """
    n = len(t)
    s = p.scores[start : start + n]
    zt = scratch.work_t[:, :n]
    np.copyto(zt, s.T)
    m = _fold(np.maximum, zt, scratch.vec[:n], reduce=True)
    _finite_or_zero(m)
    np.subtract(zt, m, out=zt)

    # zt is not contiguous when n < block_rows: index it as (C, n) via
    # the flat block of the scratch, row stride block_rows.
    flat = scratch.work_t.reshape(-1)
    target = labels * scratch.work_t.shape[1]
    target += scratch.row[:n]
    np.take(flat, target, out=t, mode="clip")  # in range; "raise" would buffer `out`
    if u is not None:
        if p.weight is None:
            _fold(np.add, zt, u[rows])
        else:
            wz = scratch.tmp[:, :n]
            np.multiply(zt, p.weight[:, None], out=wz)
            _fold(np.add, wz, u[rows])

    np.exp(zt, out=zt)
    se = _fold(np.add, zt, scratch.vec[:n], reduce=True)  # terms ≥ 0 or NaN
    np.log(se, out=l)
    np.multiply(zt, np.divide(coef.c[rows], se, out=se), out=zt)
    np.subtract.at(flat, target, coef.a[rows])  # one target per row: no index repeats
    if coef.b is not None:
        if p.weight is None:
            np.subtract(zt, coef.b[rows], out=zt)
        else:
            bw = scratch.tmp[:, :n]
            np.multiply(coef.b[rows], p.weight[:, None], out=bw)
            np.subtract(zt, bw, out=zt)
    np.copyto(p.out[start : start + n], zt.T)


def _row_reduce(op: np.ufunc, a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out_i = op`` over row ``i`` of ``a`` (shape ``(n, C)``, C-contiguous, ``C > SMALL_C``).

    Sums are ``np.einsum("ij->i")``: its vectorised contiguous sum runs at
    about 3x the speed of ``np.add.reduce`` (whose pairwise summation is
    scalar code), and for a C-contiguous 2-D operand NumPy's einsum calls
    the same kernel on each whole row, so a row's sum depends on that row
    alone, not on ``n`` or the row's position. Maxima are ``op.reduce``
    along the class axis (already vectorised).

    A lone row (``n = 1``) is passed as two stride-0 copies of itself:
    NumPy sums a 1-D operand with another kernel (in chunks of 8192 for
    longer rows), which would make its result depend on the block size.
    """
    if op is not np.add:
        return op.reduce(a, axis=1, out=out)
    if a.shape[0] == 1:
        pair = as_strided(a[0], shape=(2, a.shape[1]), strides=(0, a.strides[1]), writeable=False)
        out[0] = np.einsum("ij->i", pair)[0]
        return out
    return np.einsum("ij->i", a, out=out)


def _fold(op: np.ufunc, a: np.ndarray, out: np.ndarray, *, reduce: bool = False) -> np.ndarray:
    """``out_j = (((a_0j op a_1j) op a_2j) … )``: ``op`` over the rows of ``a`` (``(C, n)``).

    ``C − 1`` elementwise calls in a fixed order, so column ``j``'s value
    does not depend on ``n``. With ``reduce=True`` it is one call,
    ``op.reduce(a, axis=0)``, which for ``n ≥ 2`` runs the same
    elementwise loop over the rows (the fewer calls matter: short calls
    contend for the GIL). Allowed only for ``np.maximum`` and for sums of
    terms ≥ 0 or NaN: for ``n = 1`` NumPy reduces the column as one vector
    (pairwise, from 0) and some paths start sums from 0, which changes only
    signed zeros and, for ``n = 1``, which NaN a maximum returns.
    """
    if reduce and a.shape[1] >= 2:
        return op.reduce(a, axis=0, out=out)
    if a.shape[0] == 1:
        np.copyto(out, a[0])
        return out
    op(a[0], a[1], out=out)
    for k in range(2, a.shape[0]):
        op(out, a[k], out=out)
    return out


def _finite_or_zero(m: np.ndarray) -> None:
    """Reset maxima that are not finite to 0, so an all −inf row gives ``exp(−inf) = 0``."""
    m[~np.isfinite(m)] = 0


def _ufunc_bufsize(c: int) -> int | None:
    """The ufunc buffer size for ``(n, C)`` blocks, or None to keep NumPy's 8192.

    ``z * v[:, None]`` with rows shorter than the buffer makes NumPy copy the
    broadcast ``v`` into its buffer, row after row; with a buffer of at most
    one row it runs the stride-0 loop directly, 2x faster for C in
    [200, 8192). The size must be a multiple of 16.
    """
    return c // 16 * 16 if 192 <= c < 8192 else None


# --------------------------------------------------------------------------- threads

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _executor(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool with at least ``workers`` threads, grown on demand."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            old = _pool
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xsoftmax")
            _pool_size = workers
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def _task_rows(n: int, block_rows: int, threads: int) -> int:
    """Rows per task: whole blocks, at most ~MAX_BLOCK_ROWS, and 4+ tasks per thread."""
    per_thread = -(-n // (4 * threads))
    blocks = max(1, min(per_thread, MAX_BLOCK_ROWS) // block_rows)
    return blocks * block_rows


def _run_blocks(p: _Problem, threads: int) -> None:
    """Run :func:`_task` over all rows on up to ``threads`` threads, the caller's included."""
    n = p.out.shape[0]
    # Short rows: one block per task, so that each thread holds the row
    # vectors of one block only (with several blocks per task, two threads at
    # C = 10 peaked at 1.13x the gradient instead of 1.08x).
    step = p.block_rows if p.out.shape[1] <= SMALL_C else _task_rows(n, p.block_rows, threads)
    starts = range(0, n, step)
    threads = min(threads, len(starts))
    tasks: Iterator[int] = iter(starts)
    lock = threading.Lock()

    def work() -> None:
        scratch = _Scratch(p)
        bufsize = _ufunc_bufsize(p.out.shape[1])
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
                    _task(p, r0, min(r0 + step, n), scratch)
        finally:
            if old_bufsize is not None:
                np.setbufsize(old_bufsize)  # per-thread state: leave it as found

    if threads <= 1:
        work()
        return
    pool = _executor(threads - 1)
    futures = [pool.submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        # Helpers still queued behind another caller's work have nothing left to do.
        for f in futures:
            f.cancel()
        for f in futures:
            if not f.cancelled():
                f.result()
