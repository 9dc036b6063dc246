"""``xsoftmax example``: the worked example of docs/math.md, on any backend."""

from __future__ import annotations

import argparse

import numpy as np

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="numpy", help="array backend (default: numpy)")


def run(args: argparse.Namespace) -> int:
    import xsoftmax as xs

    # Scores whose softmax is p = [0.2, 0.3, 0.5]; the correct class is 1.
    scores = xs.asarray(np.log([[0.2, 0.3, 0.5]]), backend=args.backend)
    y = xs.asarray(np.array([1]), backend=args.backend)
    loss, dscores = xs.softmax_loss(scores, y)
    print(f"backend: {args.backend}")
    print("p        = [0.2, 0.3, 0.5], y = 1")
    print(f"loss     = {float(xs.to_numpy(loss)):.6f}   (-log 0.3 = {-np.log(0.3):.6f})")
    print(f"dscores  = {np.round(xs.to_numpy(dscores), 6).tolist()}   (p - onehot(y))")
    return 0
