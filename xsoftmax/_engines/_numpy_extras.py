r"""The NumPy engine for probability targets, z-loss and softcap, in cache-sized row blocks.

:func:`xsoftmax._engines.numpy.softmax_loss` hands a call here when it uses
one of these options (:func:`uses_extras`); plain calls never come here, so
their bits and speed are those of the tuned path. In the notation of
:mod:`xsoftmax._reduction`, a block of rows (:func:`_block`), read once from
the scores into a scratch block ``z`` of the compute dtype, makes

1. softcap ``c``: ``τ_ik = tanh(s_ik/c)`` (kept), ``z_ik = c τ_ik``; else ``z = s``;
   held as ``z log2(e)`` (the main path's units: ``2^x`` is NumPy's fastest exponential,
   and the scaling rides on a pass made anyway; row sums get ``ln 2`` back)
2. ``m_i = max_k z_ik`` (0 if not finite); ``z_ik ← z_ik − m_i`` (``m = 0``, no pass,
   where a softcap keeps every sum in range: ``c log2 e + log2 C ≤ 100``)
3. labels: ``t_i = z_{i,y_i}``; probabilities: ``Q_i = Σ_k w_k q_ik``,
   ``uq_i = Σ_k w_k q_ik z_ik`` (``q`` read once into a second block, kept as
   ``w ⊙ q``); smoothing: ``u_i = Σ_k w_k z_ik``
4. ``e_ik = exp(z_ik)``, ``σ_i = Σ_k e_ik``, ``l_i = log σ_i``, ``lse_i = m_i + l_i``
5. ``d_ik = e_ik (c_i + zc_i lse_i)/σ_i − a_i T_ik − b_i w_k`` with
   ``T_ik = 1[k = y_i]`` or ``w_k q_ik`` and ``c_i = probability_c(coef, Q_i)``
   for probabilities; softcap: ``d_ik ← d_ik (1 − τ_ik)(1 + τ_ik)``
   (:func:`xsoftmax._reduction.softcap_factor`'s product, made in the kept ``τ``)

and stores ``d`` into the gradient once. The row losses are
:func:`~xsoftmax._reduction.row_loss` and :func:`~xsoftmax._reduction.z_rows`,
summed ("mean", "sum") in the fixed chunks of the main path, each term on
its own (``Σ CE/D + Σ Z/V``). Scratch per thread: one to three blocks
(``z``; ``τ`` with softcap; ``w ⊙ q`` or ``b ⊗ w``) and row vectors, within
:data:`~xsoftmax._engines._numpy_pool.SCRATCH_SHARE` of the gradient; the scores,
``q`` and ``out`` may be any strided views (e.g. class stride ``d`` of a
K-dimensional batch), ``out`` may be the scores. Every row's bits depend on
that row alone: the same for every thread count and block size.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .._dtypes import compute_dtype
from .._reduction import (
    LossInputs,
    RowCoefficients,
    is_probability,
    mean_denominator,
    mean_of_total,
    mixed_weights,
    probability_c,
    probability_rows,
    row_coefficients,
    row_loss,
    z_rows,
)
from .._validate import check_positive_int
from ._numpy_pool import (
    BLOCK_BYTES,
    CHUNK_ROWS,
    MAX_BLOCK_ROWS,
    MIN_SCRATCH_BYTES,
    SCRATCH_SHARE,
    THREAD_BYTES,
    ChunkSums,
    default_num_threads,
    run_on_threads,
)
from ._numpy_rows import STORE_CHUNK, row_sum, same_view, store

__all__ = ["softmax_loss_extras", "uses_extras"]

#: Row-vector values per row of a block (m, σ, l, t or uq, u, Q, c, lse, losses, the labels and
#: their flat index, per-row coefficients v, v·w_y, α, β, a, b, c, ζv, zc, and their temporaries).
ROW_VECTOR_VALUES = 40


def uses_extras(inp: LossInputs) -> bool:
    """Whether a call uses probability targets, z-loss or softcap (this module's path)."""
    return bool(inp.z_loss) or inp.softcap is not None or is_probability(inp)


class _Problem(NamedTuple):
    inp: LossInputs  # y, weight (compute dtype), denom and zdenom as NumPy arrays
    scores: np.ndarray
    out: np.ndarray
    cdt: np.dtype
    block_rows: int
    shift: bool  # shift rows by their maximum (not needed when softcap bounds every exponential)
    shared: RowCoefficients | None  # 0-d coefficients when every row has the same
    row_losses: np.ndarray | None  # "none"
    ce_sums: ChunkSums | None  # "mean"/"sum": Σ CE_i and Σ Z_i
    z_sums: ChunkSums | None


def softmax_loss_extras(
    inp: LossInputs, out: np.ndarray | None = None, num_threads: int | None = None,
    block_rows: int | None = None,
) -> tuple[Any, np.ndarray]:
    """``(loss, dscores)`` with probability targets, z-loss or softcap (module docstring).

    The arguments are those of :func:`xsoftmax._engines.numpy.softmax_loss`.
    """
    scores = np.asarray(inp.scores)
    n, c = scores.shape
    cdt = np.dtype(compute_dtype(np, scores.dtype))
    if num_threads is not None:
        num_threads = check_positive_int(num_threads, "num_threads")
    final = None
    if out is None:
        out = np.empty((n, c), dtype=scores.dtype)
    elif np.may_share_memory(out, scores) and not same_view(out, scores):
        final, out = out, np.empty((n, c), dtype=scores.dtype)  # rows overlapping other rows
    y = np.asarray(inp.y)
    weight = None if inp.weight is None else np.array(inp.weight, dtype=cdt)  # a copy: `out` may alias it
    prob_targets = y.ndim == 2
    ii = None if prob_targets else inp.ignore_index
    denom, zdenom = inp.denom, inp.zdenom
    if inp.reduction == "mean":
        if denom is None:
            denom = mean_denominator(
                np, y[:, 0] if prob_targets else y, weight=None if prob_targets else weight,
                ignore_index=ii, dtype=cdt, chunk_rows=CHUNK_ROWS,
            )  # fmt: skip
        if zdenom is None and inp.z_loss:
            zdenom = mean_denominator(
                np, y[:, 0] if prob_targets else y, weight=None, ignore_index=ii, dtype=cdt,
                chunk_rows=CHUNK_ROWS,
            )  # fmt: skip
        denom = np.asarray(denom, dtype=cdt)
        zdenom = None if zdenom is None else np.asarray(zdenom, dtype=cdt)
    inp = inp._replace(xp=np, y=y, weight=weight, denom=denom, zdenom=zdenom)
    uniform = prob_targets or (weight is None and ii is None)
    shared = row_coefficients(inp, cdt) if uniform and n else None
    sums = inp.reduction != "none"
    plan_threads, rows = _plan(inp, out, cdt, num_threads, block_rows)
    # |z| ≤ c: Σ_k 2^{z_ik log2 e} lies in [2^-126, 2^100] unshifted, in every compute dtype.
    shift = inp.softcap is None or inp.softcap / math.log(2) + math.log2(max(c, 1)) > 100
    prob = _Problem(
        inp, scores, out, cdt, rows, shift, shared,
        None if sums else np.empty(n, dtype=scores.dtype),
        ChunkSums(n, cdt) if sums else None,
        ChunkSums(n, cdt) if sums and inp.z_loss else None,
    )  # fmt: skip
    _run(prob, plan_threads)
    if prob.row_losses is not None:
        loss = prob.row_losses
    else:
        assert prob.ce_sums is not None
        loss = np.asarray(prob.ce_sums.total())
        ztotal = None if prob.z_sums is None else np.asarray(prob.z_sums.total())
        if inp.reduction == "mean":
            loss = mean_of_total(np, loss, denom)
            if ztotal is not None:
                ztotal = mean_of_total(np, ztotal, zdenom)
        if ztotal is not None:
            loss = np.asarray(loss + ztotal)
        if loss.dtype != scores.dtype:
            with np.errstate(over="ignore"):
                loss = loss.astype(scores.dtype)
    if final is not None:
        np.copyto(final, out)
        out = final
    return loss, out


def _plan(
    inp: LossInputs, out: np.ndarray, cdt: np.dtype, num_threads: int | None, block_rows: int | None
) -> tuple[int, int]:
    """Threads and rows per block: every thread's blocks and row vectors within the scratch budget."""
    n, c = out.shape
    threads = default_num_threads() if num_threads is None else num_threads
    budget = max(SCRATCH_SHARE * out.nbytes, MIN_SCRATCH_BYTES)
    per_thread = THREAD_BYTES + STORE_CHUNK * 9  # ufunc buffers, the float16 store's temporaries
    per_row = (ROW_VECTOR_VALUES + _blocks(inp) * c) * cdt.itemsize
    if block_rows is None:
        threads = max(1, min(threads, -(-n // 64)))  # tiny batches: one thread
        rows = int((budget - threads * per_thread) // (threads * per_row))
        block_rows = max(1, min(MAX_BLOCK_ROWS, BLOCK_BYTES // (c * cdt.itemsize), rows))
        if n:  # at least as many blocks as threads
            block_rows = min(block_rows, -(-n // threads))
    return threads, min(check_positive_int(block_rows, "block_rows"), max(n, 1))


def _blocks(inp: LossInputs) -> int:
    """Scratch blocks per thread: ``z``; ``τ`` (softcap); ``w ⊙ q`` or ``b ⊗ w``."""
    aux = is_probability(inp) or (inp.weight is not None and bool(inp.label_smoothing))
    return 1 + (inp.softcap is not None) + aux


class _Scratch:
    """One thread's blocks, reused by its tasks."""

    def __init__(self, prob: _Problem) -> None:
        shape = (prob.block_rows, prob.out.shape[1])
        self.z = np.empty(shape, prob.cdt)
        self.tau: Any = np.empty(shape, prob.cdt) if prob.inp.softcap is not None else None
        self.aux: Any = np.empty(shape, prob.cdt) if _blocks(prob.inp) > 1 + (self.tau is not None) else None


def _row_dot(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out_i = Σ_k a_ik b_ik`` for C-contiguous blocks, one kernel per row (as :func:`row_sum`)."""
    if a.shape[0] == 1:  # a lone row as two stride-0 copies: the same kernel as many rows
        pa = as_strided(a[0], shape=(2, a.shape[1]), strides=(0, a.strides[1]), writeable=False)
        pb = as_strided(b[0], shape=(2, b.shape[1]), strides=(0, b.strides[1]), writeable=False)
        out[0] = np.einsum("ij,ij->i", pa, pb)[0]
        return out
    return np.einsum("ij,ij->i", a, b, out=out)


#: Bytes per piece of the mixed weights of ``uq'``: a small temporary, not a block's worth.
MIXED_BYTES = 32 * 1024


def _mixed_dot(coef: Any, wq: np.ndarray, w: np.ndarray | None, z: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``uq'_i = Σ_k w_k q'_ik z_ik`` with ``q' = (1 − ε) q + ε/C`` mixed first, as torch mixes it.

    (0 · (−inf) = NaN only where ``q' = 0``; see :func:`~xsoftmax._reduction.probability_rows`.)
    """
    if coef.beta is None:
        return _row_dot(wq, z, out)
    step = max(1, MIXED_BYTES // max(1, wq.shape[1] * wq.itemsize))
    for i in range(0, wq.shape[0], step):
        rows = slice(i, i + step)
        _row_dot(mixed_weights(coef, wq[rows], w), z[rows], out[rows])
    return out


def _block(prob: _Problem, r0: int, r1: int, scratch: _Scratch) -> None:
    """Steps 1–5 of the module docstring for rows ``r0:r1``; their losses into the sums or rows."""
    inp, cdt = prob.inp, prob.cdt
    n, w = r1 - r0, inp.weight
    z = scratch.z[:n]  # in log2 units: 2^z is NumPy's fastest exponential (as the main path)
    log2e, ln2 = cdt.type(1 / math.log(2)), cdt.type(math.log(2))
    tau = None
    if inp.softcap is not None:  # the one read of the scores, cast to the compute dtype
        tau = np.divide(prob.scores[r0:r1], cdt.type(inp.softcap), out=scratch.tau[:n], dtype=cdt)
        np.tanh(tau, out=tau)
        np.multiply(tau, cdt.type(inp.softcap) * log2e, out=z)
    else:
        np.multiply(prob.scores[r0:r1], log2e, out=z, dtype=cdt)
    if prob.shift and z.shape[1]:
        m = np.max(z, axis=1)
        m[~np.isfinite(m)] = 0  # an all −inf (or NaN) row: no shift, its p stays NaN
        z -= m[:, None]
    else:
        m = np.zeros(n, cdt)
    y = inp.y[r0:r1]
    coef = prob.shared if prob.shared is not None else row_coefficients(inp._replace(y=y), cdt)
    q_sum = t = u = wq = labels = None
    flat = z.reshape(-1)
    if is_probability(inp):
        wq = scratch.aux[:n]
        np.copyto(wq, y, casting="unsafe")  # q in the compute dtype, read once
        if w is not None:
            wq *= w
        q_sum = row_sum(wq, np.empty(n, cdt))
        t = _mixed_dot(coef, wq, w, z, np.empty(n, cdt))
    else:
        labels = y if coef.valid is None else np.where(coef.valid, y, 0)  # ignored rows: any class
        labels = np.arange(0, z.size, max(z.shape[1], 1), dtype=np.intp) + labels
        t = flat[labels]
    t *= ln2
    if inp.label_smoothing and wq is None:  # (probabilities fold smoothing into uq')
        u = row_sum(z, np.empty(n, cdt), w)
        u *= ln2
    np.exp2(z, out=z)
    se = row_sum(z, np.empty(n, cdt))
    l = np.log(se)  # noqa: E741 (the l of the docstring)
    cc = coef.c if q_sum is None else probability_c(coef, q_sum)
    lse = None
    if coef.zc is not None:
        lse = m * ln2 + l
        cc = cc + coef.zc * lse
    r = np.divide(cc, se)
    z *= r[:, None]
    if wq is not None:
        wq *= coef.a
        z -= wq
    else:
        flat[labels] -= coef.a
    if coef.b is not None:
        if w is None:
            z -= coef.b if coef.b.ndim == 0 else coef.b[:, None]
        else:
            bw = scratch.aux[:n]
            if coef.b.ndim == 0:
                np.multiply(w, coef.b, out=bw[:1])
                z -= bw[:1]
            else:
                np.multiply(coef.b[:, None], w, out=bw)
                z -= bw
    if tau is not None:  # d (1 − τ)(1 + τ) = d (1 − |τ|)(1 + |τ|), without another block
        np.abs(tau, out=tau)
        np.subtract(1, tau, out=tau)
        z *= tau
        np.subtract(2, tau, out=tau)
        z *= tau
    store(z, prob.out[r0:r1])
    ce = row_loss(np, coef, l, t, u) if q_sum is None else probability_rows(np, coef, l, q_sum, t)
    zr = None if lse is None else z_rows(np, coef, lse)
    if prob.row_losses is not None:
        prob.row_losses[r0:r1] = ce if zr is None else ce + zr
        return
    assert prob.ce_sums is not None
    prob.ce_sums.add(r0, ce)
    if prob.z_sums is not None and zr is not None:
        prob.z_sums.add(r0, zr)


def _run(prob: _Problem, threads: int) -> None:
    """:func:`_block` over all rows on up to ``threads`` threads, the caller's included."""
    n, step = prob.out.shape[0], prob.block_rows
    starts = range(0, n, step)
    tasks: Iterator[int] = iter(starts)
    lock = threading.Lock()

    def work() -> None:
        scratch = _Scratch(prob)
        # −inf and NaN rows give log 0, 0 · inf: results, as in the reference engine.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            while True:
                with lock:
                    r0 = next(tasks, None)
                if r0 is None:
                    return
                _block(prob, r0, min(r0 + step, n), scratch)

    threads = min(threads, len(starts))
    run_on_threads(work, threads)
