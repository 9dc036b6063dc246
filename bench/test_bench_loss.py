"""``softmax_loss`` forward+backward: every backend × engine, and the peers, per shape and dtype."""

from __future__ import annotations

import numpy as np
import pytest

from xsoftmax._cli import bench
from xsoftmax._cli import timing as _timing

from _suite import DTYPES, PAIRS, PEERS, SHAPES, record, shape_id

IMPLS = [pytest.param(("xsoftmax", b, e), id=f"{b}-{e}") for b, e in PAIRS]
IMPLS += [pytest.param(("peer", p, None), id=f"peer-{p}") for p in PEERS]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("impl", IMPLS)
def test_softmax_loss(benchmark, request, copy_floor, impl, shape, dtype):
    kind, name, engine = impl
    client = request.getfixturevalue("dask_client") if name == "dask" else None
    if kind == "peer":
        case = bench.make_peer(name, shape, dtype)
    else:
        case = bench.make_case(name, engine, shape, dtype, client=client)
    # The first call compiles (JAX) and warms caches; its result is checked too,
    # so a fast wrong answer cannot sit in the table.
    err = bench.max_abs_err(case, case.result())
    assert err < {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2}[dtype]
    nbytes = _timing.pass_bytes(shape, np.dtype(dtype).itemsize)
    record(
        benchmark,
        case.fn,
        device=case.device,
        group=f"softmax_loss {shape_id(shape)} {dtype}",
        nbytes=nbytes,
        floor=copy_floor(case.device, shape, dtype, client),
        backend=case.backend,
        engine=case.engine,
        max_abs_err=err,
    )
