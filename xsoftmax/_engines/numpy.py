r"""The NumPy engine: softmax cross-entropy, forward and backward, in cache-sized blocks.

The rows of the ``(N, C)`` scores are cut into *tasks* of up to a few
thousand rows, shared out among threads (NumPy releases the GIL inside its
loops). A task makes its passes over the ``(rows, C)`` data one cache
*block* at a time, each block small enough to stay in a core's L2 cache,
and does its row-vector work once, for all its rows. In the notation of
:mod:`xsoftmax._reduction`, a block makes

1. ``z_ik ← s_ik log2(e)`` (float16 widened to float32)   reads ``s`` from memory
2. ``u_i = ln 2 · Σ_k w_k (z_ik − z_{i,y_i})`` (label smoothing only)
3. ``e_ik = 2^{z_ik} = exp(s_ik)``; ``σ_i = Σ_k e_ik``; ``e_{i,y_i}``
4. ``d_ik = e_ik · c_i / σ_i − a_i 1[k = y_i] − b_i w_k``

and the task then

5. shifts the rows whose ``σ_i`` is out of range by their maximum and redoes
   their blocks (rarely: :func:`_shift_rows`, :data:`SUM_RANGE`),
6. takes ``l_i − t_i = log(σ_i / e_{i,y_i})`` (:func:`_target_terms`) and
   the row losses.

``z`` is the block of the output itself (``out``, or one new array), so only
step 1 touches main memory and every later pass runs in place in cache: the
memory traffic is about that of one copy of the ``(N, C)`` bytes. Scratch of
one block per thread is used only for float16 (stored by :func:`_store`),
for ``out=scores`` and for an ``out`` that is not C-contiguous. Blocks and
threads are sized so that this scratch and the per-block row vectors stay
within a few percent of the gradient (:data:`SCRATCH_SHARE`). A new
output's pages are left to fault in on the first write of each block: the
kernel zeroes the (2 MiB) page around the block last, leaving the block in
cache (faulting a task's rows up front measured 3-7% slower).

Why not ``exp(s − max s)`` as the reference engine does: the softmax and the
loss do not depend on the shift (``docs/math.md``), so a row whose
``Σ_k exp(s_ik)`` neither overflows nor underflows needs none, which saves
the pass that finds row maxima (slow for short rows) and the pass that
subtracts them. ``2^{s log2 e}`` is NumPy's fastest float32 exponential
(~1.5x ``np.exp``); rounding ``s log2 e`` costs a few units of rounding
(:data:`SUM_RANGE` bounds ``|s|`` of unshifted rows). The loss is taken
relative to the target logit, ``log(σ_i / e_{i,y_i})``, so the rounding of
``e_{i,y_i}`` cancels: C = 1 gives exactly 0 and the NLL term is never negative.

Row sums are ``np.einsum("ij->i")`` (:func:`_row_sum`). Row-broadcast
operations (``z *= r[:, None]``) run with a ufunc buffer of at most one row
(:func:`_ufunc_bufsize`). Short rows get the longest blocks the scratch
budget allows (:data:`SCRATCH_SHARE`): their NumPy calls are short and per
row, and contend for the GIL.

Per-row coefficients come from :func:`xsoftmax._reduction.row_coefficients`,
one task at a time (once for the whole batch without class weights and
``ignore_index``, where every row has the same ones); for ``"mean"`` the
denominator ``D = Σ_i v_i w_{y_i}`` belongs to the whole batch and is summed
first (labels only, no scores).

Determinism: every quantity of row ``i`` is computed from row ``i`` alone, in
an order that does not depend on the block or thread holding it, and row
losses (and ``D``) are summed in fixed chunks of :data:`CHUNK_ROWS` rows, then
over the chunks in order. Results are bitwise identical for every thread
count and block size.

Threads: ``num_threads`` (argument), else the environment variable
``XSOFTMAX_NUM_THREADS``, else the CPUs this process may run on, fewer for
short rows where the scratch budget would make their blocks too short
(:func:`_useful_threads`).
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
    LossInputs,
    RowCoefficients,
    mean_denominator,
    mean_of_total,
    row_coefficients,
    row_loss,
)
from .._validate import check_positive_int

__all__ = ["NUM_THREADS_ENV", "default_num_threads", "softmax_loss"]

#: Environment variable that sets the default number of threads.
NUM_THREADS_ENV = "XSOFTMAX_NUM_THREADS"

#: Bytes of compute-dtype scores per block: a 2 MiB L2. Measured with two
#: threads (float32, fresh output), 1-2 MiB beat 512 KiB by 10-40% (fewer,
#: longer NumPy calls; 1 row a block at C = 131072 is the worst); 2 MiB was
#: ~3% ahead of 1 MiB at C = 32000 and 131072, 4-8 MiB no better.
BLOCK_BYTES = 2 * 1024 * 1024

#: Most rows per block and per task, and the fewest rows of a short-row block.
MAX_BLOCK_ROWS = 32768
MIN_BLOCK_ROWS = 256

#: The scratch of all threads together (row vectors and block buffers) is
#: at most this share of the gradient's bytes (or :data:`MIN_SCRATCH_BYTES`),
#: so that the peak extra memory stays under 1.1x the gradient. It bounds
#: the blocks of short rows, whose row vectors weigh half as much as the
#: rows: each row being worked on holds :data:`ROW_VECTOR_BYTES` (σ, then l;
#: e_y, then t; the target's index; c/σ; the row losses), 8 more with label
#: smoothing (u) and :data:`COEFFICIENT_BYTES` more with per-row
#: coefficients (class weights or ``ignore_index``: v, v·w_y, α, β, a, b, c,
#: safe labels). Measured with tracemalloc at C = 10: 20, 27, 37 and (all
#: three) 56 bytes a row. Short rows want the biggest blocks allowed: their
#: NumPy calls are per row and short, and two threads mostly wait for each
#: other's GIL between calls, so the fewer calls the better (at C = 10,
#: N = 262144, two threads ran 5.7 ms in blocks of 16384 rows, 4.6 ms in
#: blocks of 32768; two threads of 10240 were no faster than one).
SCRATCH_SHARE = 0.09
MIN_SCRATCH_BYTES = 128 * 1024
ROW_VECTOR_BYTES = 20
COEFFICIENT_BYTES = 32
#: What a thread holds besides its rows (NumPy's ufunc buffers, its scratch
#: objects; 40-50 KB measured), and the call besides its threads.
THREAD_BYTES = 48 * 1024

#: Bytes of the buffer for ``b_i w_k`` (weighted label smoothing), filled in row chunks.
OUTER_BYTES = 16 * 1024

#: Classes up to which rows are short: row maxima by columns (:func:`_column_fold`).
SMALL_C = 48

#: Short rows run on fewer threads rather than in blocks shorter than this:
#: at C = 10 two threads of 8192 rows ran slower than one of 16384, two of
#: 12288 about as fast, two of 16384 1.1-1.25x faster.
SHORT_ROWS_PER_THREAD = 12288

#: A row is first computed unshifted, ``exp(s_ik)``; it is shifted by its
#: maximum ``m_i`` (:func:`_shift_rows`) when ``Σ_k exp(s_ik)`` is outside
#: ``[1/SUM_RANGE, SUM_RANGE]``. Unshifted rows thus have ``m_i ≤ ln SUM_RANGE``
#: (≈ 16.6) and ``m_i ≥ −ln SUM_RANGE − ln C``: nothing overflows, the row's
#: largest terms are normal numbers, and ``exp``'s argument is small enough
#: that rounding ``s log2(e)`` costs a few units of float32 rounding at most.
SUM_RANGE = 2.0**24

#: Rows per chunk of the fixed-order sums of row losses and of ``D``.
CHUNK_ROWS = 4096

#: float32 values per chunk of the float16 store (:func:`_store`): its
#: temporaries take 9 bytes a value.
STORE_CHUNK = 8192

#: The smallest normal float16, 2^-14.
HALF_MIN_NORMAL = np.float32(2.0**-14)


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

    inp: LossInputs  # the call's options
    scores: np.ndarray  # (N, C), any layout; written only when it is `out`
    out: np.ndarray  # (N, C) gradient, in the scores' dtype
    y: np.ndarray  # (N,) labels
    weight: np.ndarray | None  # (C,) in the compute dtype
    denom: Any  # D of the whole batch for "mean", else None
    row_losses: np.ndarray | None  # (N,) output of reduction="none"
    sums: _ChunkSums | None  # the row losses' sum otherwise
    cdt: np.dtype  # compute dtype
    direct: bool  # compute in `out` itself
    in_place: bool  # `out` is the scores: a task stores its block once done reading them
    block_rows: int
    task_rows: int
    shared: RowCoefficients | None  # every row's coefficients, when all rows share them
    log2e: np.floating  # log2(e) and ln(2) in the compute dtype
    ln2: np.floating


def softmax_loss(
    inp: LossInputs,
    /,
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
    about :data:`BLOCK_BYTES` of scores, within the scratch budget but at
    least :data:`MIN_BLOCK_ROWS` (:func:`_default_block_rows`). Neither
    changes a bit of the results.
    """
    xp = inp.xp
    scores = np.asarray(inp.scores)
    n, c = scores.shape
    cdt = np.dtype(compute_dtype(xp, scores.dtype))
    threads = default_num_threads() if num_threads is None else num_threads
    threads = check_positive_int(threads, "num_threads")
    final = None  # a caller's `out` that cannot be written block by block
    if out is None:
        out = np.empty((n, c), dtype=scores.dtype)
    elif np.may_share_memory(out, scores) and not _same_view(out, scores):
        # Rows of `out` overlap other rows of the scores: one block could
        # overwrite scores that another has yet to read.
        final, out = out, np.empty((n, c), dtype=scores.dtype)

    y = np.asarray(inp.y)
    # A copy, also when the dtype matches: `out` may alias the caller's weights.
    weight = None if inp.weight is None else np.array(inp.weight, dtype=cdt)
    # Compute in `out` itself, unless it is the scores (whose rows a task
    # reads again after its blocks, for shifts and far-off targets) or not a
    # C-contiguous compute-dtype array.
    in_place = _same_view(out, scores)
    direct = out.dtype == cdt and out.flags.c_contiguous and not in_place
    uniform = weight is None and inp.ignore_index is None  # every row counts 1
    if block_rows is None:
        if num_threads is None and not os.environ.get(NUM_THREADS_ENV, "").strip():
            threads = _useful_threads(out, cdt, threads, inp, direct)
        block_rows = _default_block_rows(out, cdt, threads, inp, direct)
    block_rows = min(check_positive_int(block_rows, "block_rows"), max(n, 1))
    denom = None
    if inp.reduction == "mean":
        if inp.denom is not None:  # one block of a larger batch (the Dask engine)
            denom = np.asarray(inp.denom, dtype=cdt)
        else:
            denom = mean_denominator(
                xp, y, weight=weight, ignore_index=inp.ignore_index, dtype=cdt, chunk_rows=CHUNK_ROWS
            )
    shared = None
    if uniform and n:  # every row has the same (0-d) coefficients
        shared = row_coefficients(inp._replace(y=y, weight=None, denom=denom), cdt)
    problem = _Problem(
        inp=inp,
        scores=scores,
        out=out,
        y=y,
        weight=weight,
        denom=denom,
        row_losses=np.empty(n, dtype=scores.dtype) if inp.reduction == "none" else None,
        sums=None if inp.reduction == "none" else _ChunkSums(n, cdt),
        cdt=cdt,
        direct=direct,
        in_place=in_place,
        block_rows=block_rows,
        task_rows=_task_rows(out, cdt, threads, inp, direct, in_place, block_rows),
        shared=shared,
        log2e=cdt.type(1 / math.log(2)),
        ln2=cdt.type(math.log(2)),
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


def _scratch_budget(
    out: np.ndarray, cdt: np.dtype, inp: LossInputs, direct: bool
) -> tuple[float, int, int]:
    """``(budget, per_thread, per_row)``: bytes of scratch allowed, and used.

    Each thread holds :data:`THREAD_BYTES` (and :data:`OUTER_BYTES` with
    class weights and label smoothing, the float16 store's temporaries when
    the block is computed in scratch), and per row being worked on the row
    vectors of :data:`SCRATCH_SHARE`, plus a row of the compute dtype when
    the block is computed in scratch (float16, ``out=scores``, an ``out``
    that is not C-contiguous).
    """
    weighted = inp.weight is not None
    per_thread = THREAD_BYTES + (OUTER_BYTES if weighted and inp.label_smoothing else 0)
    per_thread += 0 if direct else STORE_CHUNK * 9  # _to_float16's temporaries
    per_row = ROW_VECTOR_BYTES + (8 if inp.label_smoothing else 0)
    per_row += 0 if direct else out.shape[1] * cdt.itemsize
    per_row += COEFFICIENT_BYTES if weighted or inp.ignore_index is not None else 0
    return max(SCRATCH_SHARE * out.nbytes, MIN_SCRATCH_BYTES), per_thread, per_row


def _useful_threads(
    out: np.ndarray, cdt: np.dtype, threads: int, inp: LossInputs, direct: bool
) -> int:
    """Short rows gain from a thread only with blocks of :data:`SHORT_ROWS_PER_THREAD` rows.

    Fewer threads, then, with longer blocks in the same scratch budget.
    """
    if out.shape[1] > SMALL_C:
        return threads
    budget, per_thread, per_row = _scratch_budget(out, cdt, inp, direct)
    return max(1, min(threads, int(budget // (per_thread + SHORT_ROWS_PER_THREAD * per_row))))


def _default_block_rows(
    out: np.ndarray, cdt: np.dtype, threads: int, inp: LossInputs, direct: bool
) -> int:
    """Rows per block: :data:`BLOCK_BYTES` of scores, within the scratch budget.

    Short rows (one block per task) get blocks of whole loss chunks
    (:data:`CHUNK_ROWS`) when the budget allows four or more: a block that
    cuts a chunk hands its part over to be assembled, which at C = 10 cost
    more than the rows it saved (two threads, N = 262144: 4.5 ms in blocks
    of 20480 rows, 4.9 ms in blocks of 18725). Blocks are as equal as whole
    chunks (or rows) allow: as many per thread as rows allow, within one
    block when they are whole chunks (13 of 20480 rows for two threads at
    N = 262144).
    """
    budget, per_thread, per_row = _scratch_budget(out, cdt, inp, direct)
    rows = int((budget - threads * per_thread) // (threads * per_row))
    row = out.shape[1] * cdt.itemsize
    if out.shape[1] > SMALL_C:
        return max(1, min(MAX_BLOCK_ROWS, BLOCK_BYTES // row, rows))
    # At least a few hundred short rows (a few KB of row vectors): with many
    # threads on a small batch the budget can be all but spent on the threads.
    rows = max(1, min(MAX_BLOCK_ROWS, BLOCK_BYTES // row, max(rows, MIN_BLOCK_ROWS)))
    unit = CHUNK_ROWS if rows >= 4 * CHUNK_ROWS else 1  # whole chunks, or rows
    units = -(-out.shape[0] // unit)
    if not units:
        return rows
    rounds = -(-units // (threads * (rows // unit)))  # blocks per thread
    return unit * -(-units // (threads * rounds))


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """Same memory, element for element (``out=scores``)."""
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.strides == b.strides
        and a.shape == b.shape
    )


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
        """Row losses of rows ``r0 : r0 + len(rows)``.

        The full-length chunks inside are summed by one 2-D reduction (each
        row of it summed as the 1-D chunk would be, bit for bit); the
        chunks at either end may be cut, and are assembled first.
        """
        r1 = r0 + len(rows)
        k = CHUNK_ROWS
        w0, w1 = -(-r0 // k), min(r1, self.n - self.n % k) // k  # full chunks w0:w1 inside
        if w1 > w0:
            inside = rows[w0 * k - r0 : w1 * k - r0].reshape(w1 - w0, k)
            np.add.reduce(inside, axis=1, out=self.partial[w0:w1])
        # What is left is at the ends: chunks cut by r0 or r1, and the batch's
        # short last chunk.
        for j in sorted({r0 // k, (r1 - 1) // k} - set(range(w0, w1))):
            c0, c1 = j * k, min((j + 1) * k, self.n)
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
        self.vec = np.empty(shape[0], dtype=p.cdt)  # c_i / σ_i, or the row maxima m_i
        # The block itself, unless it is computed in the output.
        self.work = None if p.direct else np.empty(shape, dtype=p.cdt)
        # b_i w_k (weighted label smoothing), made a few rows at a time.
        weighted_smoothing = p.inp.label_smoothing and p.weight is not None
        outer_rows = max(1, min(shape[0], OUTER_BYTES // (shape[1] * p.cdt.itemsize)))
        self.outer = np.empty((outer_rows, shape[1]), p.cdt) if weighted_smoothing else None


def _coefficients(p: _Problem, r0: int, r1: int) -> RowCoefficients:
    """The coefficients of rows ``r0:r1``, with the whole batch's "mean" denominator."""
    if p.shared is not None:  # the same for every row: 0-d, nothing computed
        return p.shared
    return row_coefficients(p.inp._replace(y=p.y[r0:r1], weight=p.weight, denom=p.denom), p.cdt)


def _at(v: Any, rows: slice) -> Any:
    """The task's rows ``rows`` of a coefficient (a 0-d one is the same for all rows)."""
    return v[rows] if v.ndim else v


def _task(p: _Problem, r0: int, r1: int, scratch: _Scratch) -> None:
    """Rows ``r0:r1``: the ``(n, C)`` passes by cache block, then the row-vector work once.

    A block makes only the passes over its ``(rows, C)`` data and leaves its
    rows' ``σ_i`` and ``e_{i,y_i}`` in task vectors: wide rows make blocks of
    one to a few rows, and a few NumPy calls per block less is a few percent
    of the run (they also hold the GIL). Rows whose ``σ_i`` is out of range
    are then shifted and their blocks redone (:func:`_shift_rows`), and the
    row losses taken for the whole task (:func:`_target_terms`).
    """
    coef = _coefficients(p, r0, r1)
    if p.inp.ignore_index is None:
        labels = p.y[r0:r1].astype(np.intp, copy=False)
    else:
        labels = np.where(coef.valid, p.y[r0:r1], 0).astype(np.intp)  # ignored rows: any class
    n = r1 - r0
    se = np.empty(n, dtype=p.cdt)  # σ_i = Σ_k e_ik
    ey = np.empty(n, dtype=p.cdt)  # e_{i,y_i}
    u = np.empty(n, dtype=p.cdt) if p.inp.label_smoothing else None
    blocks = [slice(b0, min(b0 + p.block_rows, n)) for b0 in range(0, n, p.block_rows)]
    for rows in blocks:
        _block(p, r0, rows, coef, labels, se, ey, u, scratch)
    shift = _shift_rows(p, r0, blocks, coef, labels, se, ey, u, scratch)
    l, t = _target_terms(p.scores[r0:r1], labels, se, ey, shift, p.weight, u)  # noqa: E741
    if p.in_place:  # one block, computed in scratch: the scores are read no more
        _store(scratch.work[:n], p.out[r0:r1])
    losses = row_loss(np, coef, l, t, u)  # NumPy itself: fewer wrapper layers per block
    if p.row_losses is not None:
        p.row_losses[r0:r1] = losses
    else:
        p.sums.add(r0, losses)


def _block(
    p: _Problem,
    r0: int,
    rows: slice,
    coef: RowCoefficients,
    labels: np.ndarray,
    se: np.ndarray,
    ey: np.ndarray,
    u: np.ndarray | None,
    scratch: _Scratch,
    shift: np.ndarray | None = None,
) -> None:
    """Steps 1–4 of the module docstring for the task's rows ``rows``.

    ``coef``, ``labels``, ``se``, ``ey``, ``u`` and ``shift`` (None: all 0)
    cover the task (from row ``r0``); the block writes ``σ_i`` into ``se``,
    ``e_{i,y_i}`` into ``ey`` and (label smoothing) ``u_i`` into ``u``. The
    gradient is scaled before ``σ_i`` is known to be in range: a row out of
    range has its block redone (:func:`_shift_rows`).
    """
    start, stop = r0 + rows.start, r0 + rows.stop
    n = stop - start
    s = p.scores[start:stop]
    z = p.out[start:stop] if p.direct else scratch.work[:n]
    flat = z.reshape(-1)  # a view: z is C-contiguous
    target = np.arange(0, z.size, z.shape[1], dtype=np.intp)  # flat index of y_i in z
    target += labels[rows]
    if shift is None:
        np.multiply(s, p.log2e, out=z, dtype=p.cdt)  # also the float16 -> float32 cast
    else:
        np.subtract(s, shift[rows, None], out=z, dtype=p.cdt)
        np.multiply(z, p.log2e, out=z)
    if u is not None:
        # u_i = Σ_k w_k (s_ik − s_{i,y_i}) = ln 2 · (Σ_k w_k z_ik − W z_{i,y_i}):
        # relative to the target logit, like the loss, so that C = 1 gives 0.
        u_block = _row_sum(z, u[rows], p.weight)
        zy = np.take(flat, target, out=scratch.vec[:n], mode="clip")  # vec: free until step 4
        u_block -= np.multiply(zy, coef.wsum, out=zy)
        u_block *= p.ln2
    np.exp2(z, out=z)
    _row_sum(z, se[rows])
    np.take(flat, target, out=ey[rows], mode="clip")  # in range ("raise" would buffer)
    r = np.divide(_at(coef.c, rows), se[rows], out=scratch.vec[:n])
    np.multiply(z, r[:, None], out=z)
    # d_{i,y_i} = e_{i,y_i} c_i / σ_i − a_i, the same product as the line above
    # makes, then stored by index (np.subtract.at would hold the GIL).
    dy = np.multiply(ey[rows], r, out=r)
    dy -= _at(coef.a, rows)
    flat[target] = dy
    if coef.b is not None:
        if p.weight is None:
            np.subtract(z, coef.b if coef.b.ndim == 0 else coef.b[rows, None], out=z)
        else:  # z −= b ⊗ w, a few rows at a time
            b, k = coef.b[rows], len(scratch.outer)
            for i in range(0, n, k):
                bw = np.multiply(b[i : i + k, None], p.weight, out=scratch.outer[: n - i])
                np.subtract(z[i : i + k], bw, out=z[i : i + k])
    if not (p.direct or p.in_place):  # (in place, the task stores the block)
        _store(z, p.out[start:stop])


def _shift_rows(
    p: _Problem,
    r0: int,
    blocks: list[slice],
    coef: RowCoefficients,
    labels: np.ndarray,
    se: np.ndarray,
    ey: np.ndarray,
    u: np.ndarray | None,
    scratch: _Scratch,
) -> np.ndarray | None:
    """Shift the rows whose ``σ_i`` is out of range and redo their blocks; the shifts.

    Returns None, all shifts 0, when every ``σ_i`` is in
    ``[1/SUM_RANGE, SUM_RANGE]`` (see :data:`SUM_RANGE`). Otherwise a row
    out of range (overflow, underflow, NaN) is shifted by its maximum
    ``m_i`` (0 when that is not finite, as in the reference engine) and its
    block computed again, the block's other rows with shift 0 and so to the
    same bits. Whether a row is shifted depends on that row alone.
    """
    lo, hi = 1 / SUM_RANGE, SUM_RANGE
    # Two reductions decide the usual case (comparisons with NaN are False).
    if np.minimum.reduce(se) >= lo and np.maximum.reduce(se) <= hi:
        return None
    out_of_range = ~((se >= lo) & (se <= hi))  # also True for NaN
    shift = np.zeros_like(se)
    for rows in blocks:
        if not out_of_range[rows].any():
            continue
        s = p.scores[r0 + rows.start : r0 + rows.stop]
        m = scratch.vec[: len(s)]
        if s.shape[1] <= SMALL_C:
            _column_fold(np.maximum, s, m)
        else:
            np.maximum.reduce(s, axis=1, out=m)
        shifted = out_of_range[rows] & np.isfinite(m)
        if shifted.any():
            np.copyto(shift[rows], m, where=shifted)
            _block(p, r0, rows, coef, labels, se, ey, u, scratch, shift)
    return shift


def _store(z: np.ndarray, dst: np.ndarray) -> None:
    """``dst[...] = z``, cast to ``dst``'s dtype as NumPy casts (round to nearest even).

    float32 -> float16 is done in chunks by :func:`_to_float16`: most
    gradient entries are float16 subnormals (below 6.1e-5), and the CPU's
    conversion of those takes a microcode assist (~70 ns each here, 30x a
    normal one; a 1024×32000 float16 pass took 1.2 s in that one copy).
    """
    if not (z.dtype == np.float32 and dst.dtype == np.float16 and dst.flags.c_contiguous):
        np.copyto(dst, z, casting="unsafe")
        return
    zs, ds = z.reshape(-1), dst.reshape(-1)
    for i in range(0, zs.size, STORE_CHUNK):
        _to_float16(zs[i : i + STORE_CHUNK], ds[i : i + STORE_CHUNK])


def _to_float16(x: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = x.astype(float16)`` (1-D float32), bit for bit, without subnormal conversions.

    Where ``|x| < 2^-14`` the float16 result is subnormal (or 0): its bits are
    ``round(|x| / 2^-24)``, which float32 addition computes exactly, rounding
    to nearest even: ``|x| + 0.5`` has an ulp of 2^-24, so its bits minus
    those of 0.5 are the float16 bits (1024, the smallest normal, included).
    The sign bit is copied across; every other value is converted by NumPy.
    Checked against ``astype`` on all 2^32 float32 values.
    """
    a = np.abs(x)
    small = a < HALF_MIN_NORMAL
    if not small.any():
        np.copyto(out, x, casting="unsafe")
        return
    np.add(a, np.float32(0.5), out=a)
    bits = a.view(np.uint32)
    bits -= np.uint32(0x3F000000)  # the bits of 0.5
    bits |= (x.view(np.uint32) >> 16) & np.uint32(0x8000)
    np.copyto(out, x, casting="unsafe", where=~small)
    np.copyto(out.view(np.uint16), bits, casting="unsafe", where=small)


def _target_terms(s, labels, se, ey, shift, weight, u) -> tuple[np.ndarray, np.ndarray | None]:
    """``l``, ``t`` (and ``u``) of a task's rows, relative to a per-row shift.

    ``se`` holds ``Σ_k e_ik`` and ``ey`` the target's ``e_{i,y_i}``, where
    ``e_ik = exp(s_ik − m_i)`` (``m = shift``, None for all 0), and ``u``
    (label smoothing) ``Σ_k w_k (s_ik − s_{i,y_i})``. Where ``e_{i,y_i}`` is a
    normal number the row is re-shifted by its target logit:
    ``l_i = log(Σ_k e_ik / e_{i,y_i})`` and ``t_i = 0``, so that the rounding
    of ``e_{i,y_i}``, which is also a term of the sum, cancels: ``l − t`` is
    0 for C = 1 and as accurate as ``log(1 + small)`` for a confident row,
    however large the logits. Elsewhere (target far below the maximum, −inf,
    NaN, or ``Σ_k e_ik / e_{i,y_i}`` overflowing): ``l_i = log Σ_k e_ik``,
    ``t_i = s_{i,y_i} − m_i`` and ``u`` relative to ``m_i``
    (:func:`_exact_smoothing_sums`).

    Returns ``(l, t)``, written over ``se`` and ``ey`` (short rows hold only
    two row vectors, so that their blocks may be longer); ``t`` is None
    when it is 0 for every row.
    """
    info = np.finfo(se.dtype)
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
    t[...] = s[np.arange(len(t)), labels]  # s_{i,y_i}, for now
    if u is not None:
        _exact_smoothing_sums(s, weight, normal, t, shift, u)
    if shift is not None:
        t -= shift
    l = np.log(se, out=se)  # noqa: E741
    np.copyto(l, np.log(ratio, out=ratio), where=normal)
    t[normal] = 0
    return l, t


def _exact_smoothing_sums(s, w, normal, sy, shift, u) -> None:
    """Recompute ``u`` from the scores where the block's ``u`` is not to be trusted.

    That is where the row keeps its shift ``m_i`` (``u_i = Σ_k w_k (s_ik − m_i)``)
    and where ``u`` came out infinite or NaN (−inf scores; ``s log2 e``
    overflowing for |s| > 2.4e38); relative to ``s_{i,y_i}`` where the row
    is normal. Elementwise differences of the scores, as the reference engine
    takes them. ``w``: the class weights, or None.
    """
    redo = ~normal | ~np.isfinite(u)
    if not redo.any():
        return
    rows = np.flatnonzero(redo)
    m = np.zeros(len(rows), u.dtype) if shift is None else shift[rows]
    d = s[rows].astype(u.dtype)
    d -= np.where(normal[rows], sy[rows], m)[:, None]
    u[rows] = _row_sum(d, np.empty(len(rows), u.dtype), w)


def _column_fold(op: np.ufunc, a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out_i = (((a_i0 op a_i1) op a_i2) … )``, column by column (short rows)."""
    np.copyto(out, a[:, 0])
    for k in range(1, a.shape[1]):
        op(out, a[:, k], out=out)
    return out


def _row_sum(a: np.ndarray, out: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """``out_i = Σ_k a_ik`` (``Σ_k a_ik w_k`` with ``w``) for a C-contiguous ``(n, C)`` block.

    ``np.einsum("ij->i")``: its vectorised contiguous sum runs at about 3x
    the speed of ``np.add.reduce`` along rows (pairwise summation, scalar
    code), and ~3 ns a row for short rows, where ``np.add.reduce`` pays a
    per-row loop. For a C-contiguous 2-D operand einsum calls the same
    kernel on each whole row, so a row's sum depends on that row alone, not
    on ``n`` or the row's position.

    A lone row (``n = 1``) is passed as two stride-0 copies of itself:
    NumPy sums a 1-D operand with another kernel (in chunks of 8192 for
    longer rows), which would make its result depend on the block size.
    """
    spec, operands = ("ij->i", ()) if w is None else ("ij,j->i", (w,))
    if a.shape[0] == 1:
        pair = as_strided(a[0], shape=(2, a.shape[1]), strides=(0, a.strides[1]), writeable=False)
        out[0] = np.einsum(spec, pair, *operands)[0]
        return out
    return np.einsum(spec, a, *operands, out=out)


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


def _task_rows(
    out: np.ndarray,
    cdt: np.dtype,
    threads: int,
    inp: LossInputs,
    direct: bool,
    in_place: bool,
    block_rows: int,
) -> int:
    """Rows per task: whole blocks, 4+ tasks per thread, at most ~MAX_BLOCK_ROWS.

    A task's row vectors, besides each thread's scratch block, stay within
    the scratch budget (:func:`_scratch_budget`): float16 at C = 49, with
    every option, peaked at 1.19x the gradient without that bound. Short
    rows take one block per task, so that each thread holds the row vectors
    of one block only (with several blocks per task, two threads at C = 10
    peaked at 1.13x the gradient instead of 1.08x); so does ``out=scores``,
    whose task keeps its block in scratch until it has read its scores.
    """
    n, c = out.shape
    if c <= SMALL_C or in_place:
        return block_rows
    budget, per_thread, per_row = _scratch_budget(out, cdt, inp, direct)
    block = 0 if direct else block_rows * c * cdt.itemsize  # a thread's scratch block
    vectors = per_row - (0 if direct else c * cdt.itemsize)  # a row's vectors alone
    room = int((budget - threads * (per_thread + block)) // (threads * vectors))
    rows = min(-(-n // (4 * threads)), MAX_BLOCK_ROWS, room)
    return max(1, rows // block_rows) * block_rows


def _run_blocks(p: _Problem, threads: int) -> None:
    """Run :func:`_task` over all rows on up to ``threads`` threads, the caller's included."""
    n = p.out.shape[0]
    step = p.task_rows
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
