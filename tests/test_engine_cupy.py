"""The fused CuPy engine on a real GPU: the same numbers as the reference engine.

Every test needs a CUDA device and skips with the reason (from
``xs.available_backends()``) where CuPy sees none. Without a GPU the kernels
are still proven by ``test_cupy_nvrtc.py`` (they compile) and
``test_cupy_cpu_twin.py`` (their text computes the right numbers).
"""

from __future__ import annotations

import numpy as np
import pytest

import xsoftmax as xs
from xsoftmax._engines import select_engine

from _helpers import ENGINE_TOLERANCES

pytestmark = pytest.mark.gpu

TOL = ENGINE_TOLERANCES


@pytest.fixture(scope="module")
def cp():
    status = xs.available_backends()["cupy"]
    if status != "ok":
        pytest.skip(f"cupy: {status}")
    import cupy

    return cupy


def inputs(cp, dtype, *, n=257, c=129, seed=0, labels="int32", options="all"):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, c)) * 3
    s[1] += 1e4
    s[2] -= 1e4
    s[3, ::2] += 1e4
    s[4, [0, 5, 7]] = -np.inf
    y = rng.integers(0, c, n)
    y[4] = 1
    kw = {"reduction": "mean"}
    if options == "all":
        kw.update(weight=cp.asarray(rng.random(c) + 0.25, dtype=dtype), ignore_index=2,
                  label_smoothing=0.1)
    return cp.asarray(s, dtype=dtype), cp.asarray(y, dtype=labels), kw


def assert_engines_agree(cp, got, ref):
    for name, a, b in zip(("loss", "dscores"), got, ref, strict=True):
        assert isinstance(a, cp.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        a64, b64 = cp.asnumpy(a).astype(np.float64), cp.asnumpy(b).astype(np.float64)
        finite = b64[np.isfinite(b64)]
        rtol, atol = TOL[a.dtype.name]
        scale = float(np.abs(finite).max()) if finite.size else 1.0
        np.testing.assert_allclose(a64, b64, rtol=rtol, atol=atol * scale, err_msg=name)


def test_auto_and_fused_select_the_cupy_kernels(cp):
    from xsoftmax._engines import cupy as engine

    assert select_engine("cupy", "auto") is engine.softmax_loss
    assert select_engine("cupy", "fused") is engine.softmax_loss


@pytest.mark.parametrize("options", ["plain", "all"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("labels", ["int32", "int64"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_fused_matches_reference_on_gpu(cp, dtype, labels, reduction, options):
    s, y, kw = inputs(cp, dtype, labels=labels, options=options)
    kw["reduction"] = reduction
    got = xs.softmax_loss(s, y, engine="fused", **kw)
    ref = xs.softmax_loss(s, y, engine="reference", **kw)
    assert_engines_agree(cp, got, ref)


@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_non_contiguous_scores_and_labels(cp, layout):
    s, y, kw = inputs(cp, "float32")
    if layout == "transposed":
        view, labels = cp.asfortranarray(s), y
    else:
        big = cp.zeros((2 * s.shape[0], 3 * s.shape[1]), dtype=s.dtype)
        big[::2, ::3] = s
        view = big[::2, ::3]
        labels = cp.repeat(y, 2)[::2]
    assert not view.flags.c_contiguous
    got = xs.softmax_loss(view, labels, engine="fused", **kw)
    ref = xs.softmax_loss(s, y, engine="reference", **kw)
    assert_engines_agree(cp, got, ref)


def test_out_buffer_and_in_place(cp):
    s, y, kw = inputs(cp, "float32")
    ref = xs.softmax_loss(s, y, engine="reference", **kw)
    before = s.copy()
    buf = cp.empty_like(s)
    got = xs.softmax_loss(s, y, engine="fused", out=buf, **kw)
    assert got[1] is buf
    cp.testing.assert_array_equal(s, before)
    assert_engines_agree(cp, got, ref)
    work = s.copy()
    got2 = xs.softmax_loss(work, y, engine="fused", out=work, **kw)
    assert got2[1] is work
    assert_engines_agree(cp, got2, ref)


def test_bad_label_is_a_value_error_not_a_device_assert(cp):
    s, y, _ = inputs(cp, "float32", n=8, c=5, options="plain")
    y[3] = 5
    with pytest.raises(ValueError, match=r"y\[3\] = 5 is out of range"):
        xs.softmax_loss(s, y, engine="fused")
    cp.cuda.Device().synchronize()  # the device is still healthy


def test_empty_batch(cp):
    s = cp.zeros((0, 4), dtype=cp.float32)
    y = cp.zeros((0,), dtype=cp.int64)
    loss, d = xs.softmax_loss(s, y, engine="fused", reduction="sum")
    assert float(loss) == 0.0 and d.shape == (0, 4)


@pytest.mark.slow
def test_more_than_2_31_elements(cp):
    # 64-bit indexing: a float16 batch of 2^31 + 2^20 elements (about 4 GiB),
    # written in place so only one N x C buffer exists.
    c = 1024
    n = (2**31 + 2**20) // c
    free, _ = cp.cuda.Device().mem_info
    if free < 3 * n * c * 2:
        need = 3 * n * c * 2 / 2**30
        pytest.skip(f"needs about {need:.0f} GiB of free GPU memory, {free / 2**30:.1f} free")
    y = cp.arange(n, dtype=cp.int64) % c
    s = cp.zeros((n, c), dtype=cp.float16)
    s[n - 1, 7] = 4.0  # a row past the 2^31-th element
    loss, d = xs.softmax_loss(s, y, engine="fused", reduction="none", out=s)
    assert d is s
    last = cp.asnumpy(d[n - 1]).astype(np.float64)
    e = np.ones(c)
    e[7] = np.exp(4.0)
    p = e / e.sum()
    p[(n - 1) % c] -= 1
    np.testing.assert_allclose(last, p, rtol=2e-3, atol=1e-4)
    first = cp.asnumpy(d[0]).astype(np.float64)
    expected = np.full(c, 1 / c)
    expected[0] -= 1
    np.testing.assert_allclose(first, expected, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(float(loss[n - 1]), np.log(e.sum()), rtol=2e-3)
    np.testing.assert_allclose(float(loss[0]), np.log(c), rtol=2e-3)
