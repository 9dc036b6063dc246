"""Affine and ReLU layers, forward and backward, beside the loss.

Affine layers are matrix products (compute-bound): ``extra_info`` has
GFLOP/s. ReLU is memory-bound: ``gbps`` and ``floor_ratio`` against the copy
floor, with the bytes each pass really moves (forward: read ``x``, write
``out``; backward: read ``dout`` and ``x``, write ``dx``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import xsoftmax as xs
from xsoftmax._cli.bench import parse_shape

from _suite import DTYPES, MEASURED, env_setting, record, shape_id


def _layer_shapes(text: str) -> list[tuple[int, ...]]:
    return [parse_shape(item, "NxDxM") for item in text.split(",") if item.strip()]


#: N×D×M: a batch of 2048 rows through a 1024 → 512 layer (1 GFLOP forward).
LAYER_SHAPES = env_setting("XSOFTMAX_BENCH_LAYER_SHAPES", _layer_shapes, [(2048, 1024, 512)])
#: Dask layers are lazy graphs whose cost is the scheduler's; the loss
#: benchmarks already time Dask end to end.
LAYER_BACKENDS = [b for b in MEASURED if b != "dask"]
OPS = ("affine_forward", "affine_backward", "relu_forward", "relu_backward")


def _compiled(backend: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """JAX runs jitted and waits for its result; other backends call ``fn`` as is."""
    if backend != "jax":
        return fn
    import jax

    jitted = jax.jit(fn)
    return lambda *a: jax.block_until_ready(jitted(*a))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=shape_id)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", LAYER_BACKENDS)
def test_layer(benchmark, copy_floor, backend, op, shape, dtype):
    n, d, m = shape
    rng = np.random.default_rng(0)
    on = lambda *dims: xs.asarray(rng.standard_normal(dims), backend=backend, dtype=dtype)  # noqa: E731
    x, w, b, dout = on(n, d), on(d, m), on(m), on(n, m)
    itemsize = np.dtype(dtype).itemsize
    device = "cuda" if backend == "cupy" else "cpu"
    if op == "affine_forward":
        fn, args = (lambda x, w, b: xs.affine_forward(x, w, b)[0]), (x, w, b)
        extra = dict(flops=2 * n * d * m, nbytes=(n * d + d * m + n * m) * itemsize)
    elif op == "affine_backward":
        fn, args = (lambda dout, x, w, b: xs.affine_backward(dout, (x, w, b))), (dout, x, w, b)
        extra = dict(flops=4 * n * d * m, nbytes=(2 * n * d + 2 * d * m + n * m) * itemsize)
    elif op == "relu_forward":
        fn, args = (lambda x: xs.relu_forward(x)[0]), (x,)
        extra = dict(nbytes=2 * n * d * itemsize, floor=copy_floor(device, (n, d), dtype),
                     floor_nbytes=2 * n * d * itemsize)
    else:
        fn, args = (lambda dout, x: xs.relu_backward(dout, x)), (x, x)
        extra = dict(nbytes=3 * n * d * itemsize, floor=copy_floor(device, (n, d), dtype),
                     floor_nbytes=2 * n * d * itemsize)
    call = _compiled(backend, fn)
    call(*args)  # compile / warm up outside the timing
    record(benchmark, lambda: call(*args), device=device, group=f"{op} {shape_id(shape)} {dtype}",
           backend=backend, **extra)
