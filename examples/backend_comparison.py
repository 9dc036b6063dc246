"""The same softmax loss and gradient on every backend this machine has, side by side.

One batch of logits and labels, made once with NumPy, is moved onto each
usable backend; each computes ``xs.softmax_loss`` (its fastest engine) and
the result is compared with NumPy's float64 answer and timed. Backends that
cannot run here are listed with the reason.

    python examples/backend_comparison.py [--rows N] [--classes C]

For the full benchmark (copy floors, peers, plots) use ``xsoftmax bench``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import xsoftmax as xs


def median_ms(fn, repeat: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds (``fn`` must finish its work before returning)."""
    fn()  # warm-up: imports, compilation, first allocation
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    scores = (3 * rng.standard_normal((args.rows, args.classes))).astype(np.float32)
    y = rng.integers(0, args.classes, args.rows)
    ref_loss, ref_grad = xs.softmax_loss(scores.astype(np.float64), y)

    print(f"softmax_loss on {args.rows}x{args.classes} float32, against NumPy float64")
    print(f"{'backend':<18}{'loss':>12}{'max |dscores err|':>20}{'median ms':>12}")
    for backend, status in xs.available_backends().items():
        if status != "ok":
            print(f"{backend:<18}skipped: {status}")
            continue
        s, t = xs.asarray(scores, backend=backend), xs.asarray(y, backend=backend)

        def run(s=s, t=t):
            # to_numpy waits for the result: lazy (Dask) and asynchronous (GPU, JAX) backends included
            loss, dscores = xs.softmax_loss(s, t)
            return xs.to_numpy(loss), xs.to_numpy(dscores)

        loss, grad = run()
        err = float(np.max(np.abs(grad.astype(np.float64) - ref_grad)))
        assert err < 1e-6 and abs(float(loss) - float(ref_loss)) < 1e-4, f"{backend} disagrees with NumPy"
        print(f"{backend:<18}{float(loss):>12.6f}{err:>20.2e}{median_ms(run):>12.2f}")


if __name__ == "__main__":
    main()
