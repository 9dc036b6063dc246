"""The row-fused CuPy engine (``engine="fused-row"``) on a real GPU: the reference engine's numbers.

Skips where CuPy sees no CUDA device; without one the kernel is proven by
``test_cupy_nvrtc.py`` (it compiles for sm_80/sm_90, no spills) and
``test_cupy_block_twin.py`` (its text, block by block on the CPU).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_engine_cupy import assert_engines_agree, inputs

import xsoftmax as xs
from xsoftmax._backend import get_namespace
from xsoftmax._engines import select_engine
from xsoftmax._engines.cupy import row_plan, softmax_loss_row

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    status = xs.available_backends()["cupy"]
    if status != "ok":
        pytest.skip(f"cupy: {status}")
    import cupy

    return cupy


def test_fused_row_selects_the_row_kernel_and_auto_does_not(cp):
    xp = get_namespace("cupy")
    assert select_engine(xp, "fused-row") is softmax_loss_row
    assert select_engine(xp, "auto") is not softmax_loss_row  # unmeasured: auto keeps "fused"


@pytest.mark.parametrize("options", ["plain", "all"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("labels", ["int32", "int64"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_fused_row_matches_reference_on_gpu(cp, dtype, labels, reduction, options):
    s, y, kw = inputs(cp, dtype, labels=labels, options=options)
    kw["reduction"] = reduction
    ref = xs.softmax_loss(s, y, engine="reference", **kw)
    assert_engines_agree(cp, xs.softmax_loss(s, y, engine="fused-row", **kw), ref)


@pytest.mark.parametrize("shape", [(100_000, 10), (33, 1), (64, 1000), (8, 40_000), (4, 70_000)])
def test_fused_row_shapes_on_and_off_chip(cp, shape):
    n, c = shape
    s, y, kw = inputs(cp, "float32", n=n, c=c)
    ref = xs.softmax_loss(s, y, engine="reference", **kw)
    assert_engines_agree(cp, xs.softmax_loss(s, y, engine="fused-row", **kw), ref)
    limit = cp.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]
    print(f"C={c}: on chip = {row_plan(n, c, 4, limit_bytes=limit) is not None} (limit {limit} B)")


def test_fused_row_out_in_place_and_strided(cp):
    s, y, kw = inputs(cp, "float32")
    ref = xs.softmax_loss(s, y, engine="reference", **kw)
    before = s.copy()
    buf = cp.empty_like(s)
    got = xs.softmax_loss(s, y, engine="fused-row", out=buf, **kw)
    assert got[1] is buf
    cp.testing.assert_array_equal(s, before)
    assert_engines_agree(cp, got, ref)
    work = s.copy()
    got = xs.softmax_loss(work, y, engine="fused-row", out=work, **kw)
    assert got[1] is work
    assert_engines_agree(cp, got, ref)
    t = cp.asfortranarray(s)
    assert_engines_agree(cp, xs.softmax_loss(t, y, engine="fused-row", **kw), ref)


def test_fused_row_bad_label_is_a_value_error(cp):
    s, y, _ = inputs(cp, "float32", n=8, c=5, options="plain")
    y[3] = 5
    with pytest.raises(ValueError, match=r"y\[3\] = 5 is out of range"):
        xs.softmax_loss(s, y, engine="fused-row")
    cp.cuda.Device().synchronize()


@pytest.mark.slow
def test_fused_row_more_than_2_31_elements(cp):
    c = 1024
    n = (2**31 + 2**20) // c
    free, _ = cp.cuda.Device().mem_info
    if free < 3 * n * c * 2:
        pytest.skip(f"needs about {3 * n * c * 2 / 2**30:.0f} GiB of free GPU memory")
    y = cp.arange(n, dtype=cp.int64) % c
    s = cp.zeros((n, c), dtype=cp.float16)
    s[n - 1, 7] = 4.0
    loss, d = xs.softmax_loss(s, y, engine="fused-row", reduction="none", out=s)
    row = cp.zeros((1, c), dtype=cp.float32)
    row[0, 7] = 4.0
    ref_loss, ref_d = xs.softmax_loss(row, y[n - 1:], engine="reference", reduction="none")
    np.testing.assert_allclose(float(loss[n - 1]), float(ref_loss[0]), rtol=1e-3)
    np.testing.assert_allclose(cp.asnumpy(d[n - 1]).astype(np.float32), cp.asnumpy(ref_d[0]), atol=1e-3)
