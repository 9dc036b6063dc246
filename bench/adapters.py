"""The adapters against their frameworks' own losses: CPU, forward + backward, medians of interleaved runs.

Rows (each timed as a training step would run it):

* ``torch``: a fresh leaf of the same logits, forward, backward, for
  ``F.cross_entropy`` and ``xsoftmax.torch.cross_entropy`` (a new gradient
  every call; nothing kept alive between calls);
* ``jax``: ``jit(value_and_grad)`` of an optax-style ``jax.numpy`` loss, of
  ``xsoftmax.jax.cross_entropy``, and of a ``custom_vjp`` whose forward is a
  ``jax.pure_callback`` to the NumPy engine (the alternative not shipped);
* ``route``: ``xs.softmax_loss`` on CPU torch tensors and on their NumPy views.

The candidates of a group run in turn, ``--repeat`` rounds, and the medians
are printed with the ratio of each to the first row of its group. Run from
the repository root::

    python bench/adapters.py --shapes 4096x32000,65536x10 --repeat 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import xsoftmax as xs
from xsoftmax._cli.bench import parse_shapes


def torch_group(s: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], Any]]:
    import torch
    import torch.nn.functional as F

    from xsoftmax.torch import cross_entropy

    base, yt = torch.from_numpy(s), torch.from_numpy(y)

    def step(loss_fn: Callable[..., Any]) -> Callable[[], Any]:
        def run() -> Any:
            leaf = base.detach().requires_grad_()  # fresh leaf: a new .grad every call
            loss_fn(leaf, yt).backward()
            return leaf.grad

        return run

    return {"peer:F.cross_entropy": step(F.cross_entropy), "torch:xsoftmax.torch": step(cross_entropy)}


def _callback_cross_entropy() -> Callable[[Any, Any], Any]:
    """A ``custom_vjp`` whose forward calls the NumPy engine through ``jax.pure_callback``."""
    import jax

    def host(s: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        loss, d = xs.softmax_loss(np.asarray(s), np.asarray(y))
        return np.asarray(loss), d

    def both(s: Any, y: Any) -> Any:
        shapes = (jax.ShapeDtypeStruct((), s.dtype), jax.ShapeDtypeStruct(s.shape, s.dtype))
        return jax.pure_callback(host, shapes, s, y, vmap_method="sequential")

    @jax.custom_vjp
    def ce(s: Any, y: Any) -> Any:
        return both(s, y)[0]

    def fwd(s: Any, y: Any) -> Any:
        loss, d = both(s, y)
        return loss, d

    def bwd(d: Any, g: Any) -> Any:
        return d * g, None

    ce.defvjp(fwd, bwd)
    return ce


def jax_group(s: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], Any]]:
    import jax
    import jax.numpy as jnp

    from xsoftmax.jax import cross_entropy

    def own(s: Any, y: Any) -> Any:  # optax's softmax_cross_entropy_with_integer_labels, mean
        logp = jax.nn.log_softmax(s, axis=1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    sj, yj = jnp.asarray(s), jnp.asarray(y)
    fns = {
        "peer:jit(value_and_grad)": own,
        "jax:xsoftmax.jax": cross_entropy,
        "jax:pure_callback(numpy engine)": _callback_cross_entropy(),
    }
    out = {}
    for name, f in fns.items():
        g = jax.jit(jax.value_and_grad(f))
        out[name] = lambda g=g: jax.block_until_ready(g(sj, yj))
    return out


def route_group(s: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], Any]]:
    import torch

    ts, ty = torch.from_numpy(s), torch.from_numpy(y)
    return {
        "numpy views: xs.softmax_loss": lambda: xs.softmax_loss(s, y),
        "torch tensors: xs.softmax_loss": lambda: xs.softmax_loss(ts, ty),
    }


GROUPS = {"torch": torch_group, "jax": jax_group, "route": route_group}


def measure(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Median seconds of each function, run in turn (interleaved) ``repeat`` times after a warm-up.

    Odd rounds run the functions in reverse order: the second of a pair was
    measured up to 3x slower than the first at 65536 x 10 whichever it was,
    so each takes each position equally often.
    """
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeat):
        for name, f in list(fns.items())[:: 1 if i % 2 == 0 else -1]:
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", type=parse_shapes,
                        default=[(4096, 32000), (65536, 10)])
    parser.add_argument("--groups", default="torch,jax,route")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    for shape in args.shapes:
        rng = np.random.default_rng(0)
        s = (rng.standard_normal(shape) * 3).astype(np.float32)
        y = rng.integers(0, shape[1], shape[0])
        for group in args.groups.split(","):
            medians = measure(GROUPS[group](s, y), args.repeat)
            first = next(iter(medians.values()))
            for name, t in medians.items():
                print(f"{shape[0]}x{shape[1]} float32 {group:5s} {name:34s} {t * 1e3:9.2f} ms  "
                      f"{first / t:5.2f}x vs first", flush=True)


if __name__ == "__main__":
    main()
