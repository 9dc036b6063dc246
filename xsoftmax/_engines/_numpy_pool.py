"""What the NumPy engine's two paths share: the scratch budget, the thread pool, fixed-chunk sums.

:mod:`.numpy` (the tuned path) and :mod:`._numpy_extras` (probability
targets, z-loss, softcap) both cut their rows into cache-sized blocks within
the same share of the gradient, run them on this process-wide pool, and sum
row losses in fixed chunks, so that no result depends on threads or blocks.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .._validate import check_positive_int

__all__ = [
    "BLOCK_BYTES",
    "CHUNK_ROWS",
    "MAX_BLOCK_ROWS",
    "MIN_SCRATCH_BYTES",
    "NUM_THREADS_ENV",
    "SCRATCH_SHARE",
    "THREAD_BYTES",
    "ChunkSums",
    "default_num_threads",
    "executor",
    "run_on_threads",
]

#: Environment variable that sets the default number of threads.
NUM_THREADS_ENV = "XSOFTMAX_NUM_THREADS"
#: Bytes of compute-dtype scores per block: a 2 MiB L2 keeps every pass after the first in cache.
BLOCK_BYTES = 2 * 1024 * 1024
#: Most rows per block and per task: longer buys nothing and grows the row vectors.
MAX_BLOCK_ROWS = 32768
#: Scratch of all threads (row vectors, block buffers) as a share of the gradient: peak under 1.1x.
SCRATCH_SHARE = 0.09
#: The scratch budget of a tiny batch, where a share of the gradient is too little to work in.
MIN_SCRATCH_BYTES = 128 * 1024
#: What a thread holds besides its rows (NumPy's ufunc buffers, its scratch objects).
THREAD_BYTES = 48 * 1024
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


class ChunkSums:
    """``Σ_i rows_i`` as ``Σ_j (Σ_{i ∈ chunk j} rows_i)`` over fixed chunks of rows.

    Each chunk is one ``np.add.reduce`` of the same contiguous values (a
    chunk cut by a task boundary is assembled first): the total does not
    depend on the tasks.
    """

    def __init__(self, n: int, dtype: np.dtype, chunk_rows: int = CHUNK_ROWS) -> None:
        self.n, self.k = n, chunk_rows
        self.partial = np.empty(math.ceil(n / chunk_rows), dtype=dtype)
        self.pending: dict[int, np.ndarray] = {}
        self.filled: dict[int, int] = {}  # rows of each pending chunk handed in so far
        self.lock = threading.Lock()

    def add(self, r0: int, rows: np.ndarray) -> None:
        """Row losses of rows ``r0 : r0 + len(rows)``; whole chunks by one 2-D reduction."""
        if r0 == 0 and len(rows) == self.n <= self.k:  # one task, one chunk: a small call
            self.partial[0] = np.add.reduce(rows)
            return
        r1 = r0 + len(rows)
        k = self.k
        w0, w1 = -(-r0 // k), min(r1, self.n - self.n % k) // k  # full chunks w0:w1 inside
        if w1 > w0:
            inside = rows[w0 * k - r0 : w1 * k - r0].reshape(w1 - w0, k)
            np.add.reduce(inside, axis=1, out=self.partial[w0:w1])
        # Left at the ends: chunks cut by r0 or r1, and the batch's short last chunk.
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


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def executor(workers: int) -> ThreadPoolExecutor:
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


def run_on_threads(work: Callable[[], None], threads: int) -> None:
    """``work()`` on ``threads`` threads at once, the caller's included; their errors re-raised."""
    if threads <= 1:
        work()
        return
    pool = executor(threads - 1)
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
