"""How fast can *any* pure-NumPy softmax-loss pass be? A bound, not an engine.

Times the bare sequence of NumPy calls that a fused forward+backward pass
cannot do without, on blocks of ``--block-rows`` rows shared out among
``--threads`` threads, with no input checks, no options and no care for
overflow (standard-normal logits)::

    z = s·log2 e;  e = 2^z;  σ = Σ_k e (einsum);  e_y = e[i, y_i]
    loss += Σ_i log(σ_i / e_y);  d = e · (1/N)/σ;  d[i, y_i] = e_y (1/N)/σ − 1/N

and prints the time as a ratio to a plain copy of the same bytes
(:func:`xsoftmax._cli.timing.copy_floor`), next to the NumPy engine's own time
and the row vectors that block size holds (``σ``, ``e_y``, the target's
flat index, the ratio ``σ / e_y``: 20 bytes a row and thread, as the
engine's).

Short rows make the point: at C = 10 each call costs about as much as the
row's arithmetic, so the ratio depends on the number of calls (block size),
and block size on the memory the row vectors may take. Run it from the
repository root::

    python bench/numpy_floor.py --shape 262144x10 --block-rows 16384,32768,131072
"""

from __future__ import annotations

import argparse
import os
import threading

import numpy as np

import xsoftmax as xs
from xsoftmax._cli import timing as _timing
from xsoftmax._cli.bench import parse_shape
from xsoftmax._engines.numpy import NUM_THREADS_ENV

ROW_VECTOR_BYTES = 20  # σ, e_y, the target's flat index (8), σ / e_y

LOG2E = np.float32(1 / np.log(2))


def bare_pass(s: np.ndarray, y: np.ndarray, block_rows: int, threads: int) -> tuple[float, np.ndarray]:
    """``(loss, dscores)`` of the mean loss by the bare call sequence (see the module docstring)."""
    n, c = s.shape
    out = np.empty_like(s)
    inv_n = np.float32(1 / n)
    starts = iter(range(0, n, block_rows))
    lock = threading.Lock()
    partial: list[float] = []

    def work() -> None:
        total = 0.0
        while True:
            with lock:
                r0 = next(starts, None)
            if r0 is None:
                break
            r1 = min(r0 + block_rows, n)
            z = out[r0:r1]
            flat = z.reshape(-1)
            np.multiply(s[r0:r1], LOG2E, out=z)
            np.exp2(z, out=z)
            se = np.einsum("ij->i", z)
            target = np.arange(0, z.size, c, dtype=np.intp)
            target += y[r0:r1]
            ey = np.take(flat, target, mode="clip")
            ratio = np.divide(se, ey)
            total += float(np.add.reduce(np.log(ratio, out=ratio)))
            r = np.divide(inv_n, se, out=se)
            np.multiply(z, r[:, None], out=z)
            dy = np.multiply(ey, r, out=ey)
            dy -= inv_n
            flat[target] = dy  # (np.subtract.at would hold the GIL)
        with lock:
            partial.append(total)

    helpers = [threading.Thread(target=work) for _ in range(threads - 1)]
    for t in helpers:
        t.start()
    work()
    for t in helpers:
        t.join()
    return sum(partial) / n, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=parse_shape, default=(262144, 10), help="NxC (262144x10)")
    parser.add_argument("--block-rows", default="16384,32768,131072", help="comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args(argv)
    n, c = args.shape
    rng = np.random.default_rng(0)
    s = rng.standard_normal((n, c), dtype=np.float32)
    y = rng.integers(0, c, n)

    floor = _timing.copy_floor("cpu", (n, c), "float32", repeat=args.repeat).median
    ref_loss, ref_d = xs.softmax_loss(s, y)
    os.environ[NUM_THREADS_ENV] = str(args.threads)  # the engine on the bare calls' threads
    t_engine = _timing.measure(lambda: xs.softmax_loss(s, y), repeat=args.repeat).median
    print(f"{n}x{c} float32, {args.threads} threads; copy floor {floor * 1e3:.2f} ms")
    print(f"  NumPy engine (fused)          {t_engine * 1e3:7.2f} ms  {t_engine / floor:5.2f}x floor")
    for rows in (int(v) for v in args.block_rows.split(",")):
        loss, d = bare_pass(s, y, rows, args.threads)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-4)  # the same numbers, or no bound
        np.testing.assert_allclose(d, ref_d, rtol=1e-4, atol=1e-9)
        t = _timing.measure(lambda rows=rows: bare_pass(s, y, rows, args.threads), repeat=args.repeat).median
        held = ROW_VECTOR_BYTES * min(rows, n) * args.threads / (n * c * 4)
        print(
            f"  bare calls, {rows:>7} rows/block {t * 1e3:7.2f} ms  {t / floor:5.2f}x floor"
            f"  (row vectors {held:.2f}x the gradient)"
        )


if __name__ == "__main__":
    main()
