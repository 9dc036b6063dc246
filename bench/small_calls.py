"""Fixed cost of a small ``softmax_loss`` call against the textbook vectorised NumPy code.

At the sizes of CS231n's minibatches and of the spiral example a call is
all overhead: validation, coefficients, planning, dispatch. This script
times ``xs.softmax_loss`` (NumPy, float32, every check made) and CS231n's
vectorised softmax (shift, exp, normalise, ``dscores[range(N), y] -= 1``,
mean) on the same inputs, *interleaved*: each round times one batch of calls
of each, so both see the same machine load. It prints, per shape, the median
time per call of each (the fastest round) and their ratio (the median of the
rounds' ratios; the target is at most 1.5)::

    python bench/small_calls.py --repeat 200 --shapes 100x3,256x10,1024x10
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

import xsoftmax as xs

SHAPES = ((100, 3), (256, 10), (1024, 10))


def textbook(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """CS231n's vectorised softmax loss and gradient (mean over the rows)."""
    n = scores.shape[0]
    shifted = scores - np.max(scores, axis=1, keepdims=True)
    exp_scores = np.exp(shifted)
    probs = exp_scores / np.sum(exp_scores, axis=1, keepdims=True)
    loss = float(np.sum(-np.log(probs[range(n), y])) / n)
    dscores = probs
    dscores[range(n), y] -= 1
    dscores /= n
    return loss, dscores


def library(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    loss, d = xs.softmax_loss(scores, y)
    return float(loss), d


def _per_call(fn: Callable[..., object], args: tuple, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    return (time.perf_counter() - t0) / calls


def measure(n: int, c: int, *, repeat: int, calls: int = 20, seed: int = 0) -> tuple[float, float, float]:
    """``(library, textbook, ratio)``: the fastest seconds per call of each, timed in
    alternating batches, and the median over the rounds of their ratio in a round
    (robust to a machine whose load changes between rounds)."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, c)).astype(np.float32)
    y = rng.integers(0, c, n)
    lib_loss, lib_d = library(scores, y)
    ref_loss, ref_d = textbook(scores, y)
    np.testing.assert_allclose(lib_loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(lib_d, ref_d, rtol=1e-4, atol=1e-7)
    args = (scores, y)
    for fn in (library, textbook):  # warm up
        _per_call(fn, args, calls)
    lib, ref = [], []
    for _ in range(repeat):
        lib.append(_per_call(library, args, calls))
        ref.append(_per_call(textbook, args, calls))
    return min(lib), min(ref), statistics.median(a / b for a, b in zip(lib, ref, strict=True))


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        n, c = part.lower().split("x")
        out.append((int(n), int(c)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="alternating rounds (default 200)")
    parser.add_argument("--calls", type=int, default=20, help="calls per round (default 20)")
    parser.add_argument("--shapes", type=_shapes, default=list(SHAPES), help="NxC,... (float32)")
    args = parser.parse_args(argv)
    print(f"{'shape':>10}  {'softmax_loss':>12}  {'textbook':>9}  ratio (median of rounds)")
    for n, c in args.shapes:
        lib, ref, ratio = measure(n, c, repeat=args.repeat, calls=args.calls)
        print(f"{f'{n}x{c}':>10}  {lib * 1e6:9.1f} µs  {ref * 1e6:6.1f} µs  {ratio:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
