"""The row-fused CUDA kernel, run block by block on the CPU, agrees with the reference engine.

:mod:`_block_twin` builds the engine's own kernel text
(:data:`~xsoftmax._engines._cuda_source.ROW_SOURCE`) with g++ against a header
that gives every CUDA thread of a block an OS thread, ``__syncthreads`` a real
barrier and the warp shuffles their lane semantics. The engine's own driver
(:func:`xsoftmax._engines.cupy.fused_row_softmax_loss`) launches it on NumPy
buffers with blocks of 32-1024 threads, and its results are compared with
``engine="reference"`` in float64. Mutated kernel text must fail the same
comparison.
"""

from __future__ import annotations

import ctypes
import os
import subprocess

import numpy as np
import pytest
from _block_twin import HEADER, BlockTwinLauncher, BlockTwinUnavailable, compiler

import xsoftmax as xs
from xsoftmax._engines._cuda_source import ROW_SOURCE, row_kernel_name
from xsoftmax._engines.cupy import fused_row_softmax_loss, row_plan
from xsoftmax._reduction import row_coefficients
from xsoftmax._validate import check_loss_inputs, check_out

from _cpu_twin import TwinLauncher
from _helpers import ENGINE_TOLERANCES

pytestmark = pytest.mark.cpu_twin

REDUCTIONS = ("mean", "sum", "none")
OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore_index": 2},
    "smooth": {"label_smoothing": 0.2},
    "all": {"weight": True, "ignore_index": 2, "label_smoothing": 0.1},
}
LIMIT = 48 * 1024  # a GPU's default dynamic shared memory per block


@pytest.fixture(scope="session")
def twin_dir(tmp_path_factory):
    try:
        compiler()
    except BlockTwinUnavailable as exc:  # pragma: no cover - g++ is part of CI
        pytest.fail(str(exc))
    return str(tmp_path_factory.mktemp("block_twin"))


@pytest.fixture(scope="session")
def launcher(twin_dir):
    return BlockTwinLauncher(twin_dir)


def fused_row(launcher, twin_dir, scores, y, *, out=None, limit_bytes=LIMIT, plan=None, **kw):
    """``softmax_loss(..., engine="fused-row")`` with the block twin in place of the GPU."""
    opts = {"reduction": "mean", "weight": None, "ignore_index": None, "label_smoothing": 0.0}
    inp = check_loss_inputs(scores, y, engine="fused-row", **{**opts, **kw})
    if out is not None:
        check_out(inp.xp, out, scores)
    fallback = TwinLauncher(twin_dir)
    result = fused_row_softmax_loss(
        inp, launcher, fallback, np, limit_bytes=limit_bytes, out=out, **(plan or {})
    )
    return result, fallback.calls


def assert_like_reference(got, scores, y, dtype=None, **kw):
    loss, d = got
    ref_loss, ref_d = xs.softmax_loss(np.asarray(scores, np.float64), y, engine="reference", **kw)
    rtol, atol = ENGINE_TOLERANCES[dtype or scores.dtype.name]
    assert d.dtype == scores.dtype and d.shape == scores.shape
    assert loss.dtype == scores.dtype and loss.shape == ref_loss.shape
    for name, a, b in (("loss", loss, ref_loss), ("dscores", d, ref_d)):
        b64 = np.asarray(b, dtype=np.float64)
        finite = b64[np.isfinite(b64)]
        scale = float(np.max(np.abs(finite))) if finite.size else 1.0
        np.testing.assert_allclose(
            np.asarray(a, dtype=np.float64), b64, rtol=rtol, atol=atol * max(scale, 1e-30),
            err_msg=f"{name} differs from the reference engine",
        )


def make_inputs(dtype, options, *, n=37, c=13, seed=0, label_dtype=np.int32):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, c)) * 3
    s[1] += 1e4
    s[2] -= 1e4
    s[3, ::2] += 1e4
    s = s.astype(dtype)
    y = rng.integers(0, c, n).astype(label_dtype)
    kw = {k: v for k, v in options.items() if k != "weight"}
    if options.get("weight"):
        kw["weight"] = (rng.random(c) + 0.25).astype(dtype)
    return s, y, kw


def test_block_twin_header_shuffles_have_cuda_lane_semantics(twin_dir):
    # __shfl_xor_sync / __shfl_down_sync with a width: lanes that would read
    # past their segment get their own value (CUDA C++ Programming Guide, warp
    # shuffle functions). Two warps, so a warp never reads another's lanes.
    src = f"""#include "{HEADER}"
extern "C" void probe(int* out) {{
  twin::launch(1, 64, 0, [=] {{
    const int t = threadIdx.x;
    out[t] = __shfl_down_sync(0xffffffffu, 100 * t, 3, 8);
    out[64 + t] = __shfl_xor_sync(0xffffffffu, 100 * t, 5, 4);
    out[128 + t] = __shfl_xor_sync(0xffffffffu, 100 * t, 16);
    __syncthreads();
  }});
}}
"""
    path = os.path.join(twin_dir, "probe")
    with open(path + ".cpp", "w") as fh:
        fh.write(src)
    subprocess.run([compiler(), "-std=c++20", "-pthread", "-shared", "-fPIC", path + ".cpp", "-o",
                    path + ".so"], check=True, capture_output=True)
    out = np.zeros(192, np.int32)
    ctypes.CDLL(path + ".so").probe(out.ctypes.data_as(ctypes.c_void_p))
    t = np.arange(64)
    lane = t % 32
    down = np.where(lane % 8 + 3 < 8, t + 3, t)
    src_xor = lane ^ 5
    xor4 = np.where(src_xor >= (lane // 4 + 1) * 4, lane, src_xor) + 32 * (t // 32)
    np.testing.assert_array_equal(out[:64], 100 * down)
    np.testing.assert_array_equal(out[64:128], 100 * xor4)
    np.testing.assert_array_equal(out[128:], 100 * ((lane ^ 16) + 32 * (t // 32)))


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ("float32", "float64", "float16"))
def test_block_twin_matches_reference(launcher, twin_dir, dtype, reduction, option):
    labels = np.int64 if reduction == "sum" else np.int32
    s, y, kw = make_inputs(dtype, OPTIONS[option], label_dtype=labels)
    before = s.copy()
    got, fallback = fused_row(launcher, twin_dir, s, y, reduction=reduction, **kw)
    assert_like_reference(got, s, y, reduction=reduction, **kw)
    assert fallback == [] and launcher.plans[-1].rows > 1  # one launch, several rows a block
    np.testing.assert_array_equal(s, before)  # inputs are never modified


def adversarial(dtype, c=9, n=12, seed=3):
    """±1e4, −inf masks, a masked target, a whole −inf row (ignored), NaN, +inf, a flat row."""
    s, y, _ = make_inputs(dtype, {}, n=n, c=c, seed=seed, label_dtype=np.int64)
    s[4, [0, 3, 5][: max(1, c // 3)]] = -np.inf
    y[4] = 1 % c
    s[5, y[5]] = -np.inf
    s[6] = -np.inf
    y[6] = -100
    s[7, c // 2] = np.nan
    s[8, c - 1] = np.inf
    s[9] = 0.0
    return s, y


# (C, plan options): one thread per row up to 1024 threads per row; blocks of 32 to 1024 threads.
SHAPES = {
    "C1-threads32": (1, {"block_threads": 32}),
    "C9-group2": (9, {}),
    "C33-group8": (33, {"per_thread": 4, "block_threads": 64}),
    "C100-group32": (100, {"per_thread": 4, "block_threads": 32}),
    "C300-group64": (300, {"per_thread": 5}),
    "C777-group256": (777, {"per_thread": 4, "block_threads": 512}),
    "C2049-group1024": (2049, {"per_thread": 2, "block_threads": 1024}),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", ("float32", "float16", "float64"))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_block_twin_adversarial_rows(launcher, twin_dir, shape, dtype):
    c, plan = SHAPES[shape]
    s, y = adversarial(dtype, c=c)
    kw = {"ignore_index": -100, "reduction": "none", "label_smoothing": 0.1}
    (loss, d), fallback = fused_row(launcher, twin_dir, s, y, plan=plan, **kw)
    ref_loss, ref_d = xs.softmax_loss(s.astype(np.float64), y, engine="reference", **kw)
    assert fallback == []
    expected = row_plan(len(y), c, s.itemsize, limit_bytes=LIMIT, **plan)
    assert launcher.plans[-1] == expected
    # NaN and ±inf land where the reference puts them, row by row.
    np.testing.assert_array_equal(np.isnan(loss), np.isnan(ref_loss))
    np.testing.assert_array_equal(np.isnan(d), np.isnan(ref_d))
    np.testing.assert_array_equal(np.isinf(loss), np.isinf(ref_loss))
    ok = np.isfinite(ref_loss)
    assert ok.sum() >= 6
    rtol, atol = ENGINE_TOLERANCES[dtype]
    np.testing.assert_allclose(loss[ok].astype(np.float64), ref_loss[ok], rtol=rtol, atol=atol * 1e4)
    fin = np.isfinite(ref_d)
    np.testing.assert_allclose(d[fin].astype(np.float64), ref_d[fin], rtol=rtol, atol=atol)


@pytest.mark.parametrize("side", ("below", "at", "above"))
def test_block_twin_on_chip_limit(launcher, twin_dir, side):
    # A small limit stands for the GPU's shared memory: a row that fits runs the
    # row kernel; one class more falls back to the two-pass fused engine.
    c_fit = (4096 - 768) // 4  # ROW_SCRATCH_BYTES = 768, float32 rows
    c = {"below": c_fit - 1, "at": c_fit, "above": c_fit + 1}[side]
    s, y, kw = make_inputs("float32", OPTIONS["all"], n=5, c=c, seed=7)
    got, fallback = fused_row(launcher, twin_dir, s, y, limit_bytes=4096, **kw)
    assert_like_reference(got, s, y, **kw)
    if side == "above":
        assert fallback == ["lse", "smooth", "grad"]
    else:
        assert fallback == [] and launcher.plans[-1].rows == 1


def test_block_twin_grid_loops_over_rows(launcher, twin_dir):
    s, y, kw = make_inputs("float32", OPTIONS["all"], n=300, c=13, seed=1)
    got, _ = fused_row(launcher, twin_dir, s, y, plan={"block_threads": 32, "max_grid": 3}, **kw)
    assert launcher.plans[-1].grid == 3 and launcher.plans[-1].rows * 3 < 300
    assert_like_reference(got, s, y, **kw)


@pytest.mark.parametrize("dtype", ("float32", "float16"))
def test_block_twin_out_in_place_and_strided(launcher, twin_dir, dtype):
    s, y, kw = make_inputs(dtype, OPTIONS["all"], n=20, c=45, seed=2)
    ref = xs.softmax_loss(s.astype(np.float64), y, engine="reference", **kw)

    inplace = s.copy()
    loss, d = fused_row(launcher, twin_dir, inplace, y, out=inplace, **kw)[0]
    assert d is inplace
    assert_like_reference((loss, d), s, y, **kw)

    # Rows of a larger buffer (row stride 2C), read and written without copies.
    big = np.zeros((40, 45), dtype)
    big[::2] = s
    view = big[::2]
    out_big = np.full((20, 90), 7, dtype)
    out = out_big[:, 10:55]
    loss, d = fused_row(launcher, twin_dir, view, y, out=out, **kw)[0]
    assert d is out
    np.testing.assert_allclose(d.astype(np.float64), ref[1], rtol=ENGINE_TOLERANCES[dtype][0],
                               atol=ENGINE_TOLERANCES[dtype][1])
    assert (out_big[:, :10] == 7).all() and (out_big[:, 55:] == 7).all()  # nothing else written

    # Columns not contiguous (a transposed copy): copied once, results equal.
    t = np.asfortranarray(s)
    got = fused_row(launcher, twin_dir, t, y, **kw)[0]
    assert_like_reference(got, s, y, **kw)

    # out overlapping scores without being them: the scores are copied first.
    buf = np.concatenate([s, s[:1]])
    got = fused_row(launcher, twin_dir, buf[:-1], y, out=buf[1:], **kw)[0]
    assert_like_reference(got, s, y, **kw)


def test_block_twin_64bit_row_offsets(launcher, twin_dir, tmp_path):
    # Two rows 2^31 elements apart in a sparse file: a 32-bit offset would read
    # (and write) the wrong memory. Only the pages of the two rows are touched.
    c = 16
    stride = 2**31 + 64
    path = tmp_path / "sparse.bin"
    with open(path, "wb") as fh:
        fh.truncate((stride + c) * 4)
    mm = np.memmap(path, dtype=np.float32, mode="r+", shape=(stride + c,))
    rows = np.lib.stride_tricks.as_strided(mm, shape=(2, c), strides=(stride * 4, 4))
    rng = np.random.default_rng(5)
    values = rng.standard_normal((2, c)).astype(np.float32)
    rows[...] = values
    y = np.array([3, 11], np.int64)
    loss, d = fused_row(launcher, twin_dir, rows, y, out=rows, reduction="none")[0]
    assert_like_reference((loss, np.array(d)), values, y, reduction="none")
    del rows, d, mm


def test_block_twin_bfloat16_rows(launcher):
    # bfloat16 has no NumPy dtype: the kernel is launched directly on its bits
    # and compared with the float64 reference of the bfloat16 values.
    rng = np.random.default_rng(4)
    n, c = 9, 50
    f = (rng.standard_normal((n, c)) * 3).astype(np.float32)
    f[1] += 1e4
    bits = (f.view(np.uint32) + 0x7FFF + ((f.view(np.uint32) >> 16) & 1)) >> 16
    s16 = bits.astype(np.uint16)
    values = (s16.astype(np.uint32) << 16).view(np.float32)
    y = rng.integers(0, c, n).astype(np.int64)
    inp = check_loss_inputs(values, y, reduction="sum", weight=None, ignore_index=None,
                            label_smoothing=0.0, engine="fused-row")
    coef = row_coefficients(inp, np.float32)
    # 0-d coefficients are shared by every row; the kernel reads (N,) arrays.
    a_rows, c_rows = np.full(n, coef.a, np.float32), np.full(n, coef.c, np.float32)
    plan = row_plan(n, c, 2, limit_bytes=LIMIT)
    lse, t = np.empty(n, np.float32), np.empty(n, np.float32)
    d = np.empty((n, c), np.uint16)
    i64, i32 = np.int64, np.int32
    launcher(plan, row_kernel_name("bfloat16", "int64"), s16, i64(c), y, i64(n), i64(c), a_rows, c_rows,
             a_rows, np.ones(c, np.float32), i32(0), i32(plan.group), lse, t, lse, d, i64(c))
    grad = (d.astype(np.uint32) << 16).view(np.float32)
    ref_loss, ref_d = xs.softmax_loss(values.astype(np.float64), y, reduction="none", engine="reference")
    np.testing.assert_allclose(lse - t, ref_loss, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad, ref_d, rtol=2**-7, atol=2**-9)


MUTANTS = {
    # Half the lanes of a warp never combined.
    "short-butterfly": ("for (int o = width / 2; o > 0;", "for (int o = width / 4; o > 0;"),
    # The group's warps read the scratch before every warp has written it.
    "no-barrier": ("    __syncthreads();\n    for (int j = 0; j < K; ++j) {\n      F acc",
                   "    for (int j = 0; j < K; ++j) {\n      F acc"),
    # The gradient without the max shift: exp overflows at +1e4.
    "no-shift": ("xsoftmax_load(buf[k]) - m - l)", "xsoftmax_load(buf[k]) - l)"),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_block_twin_catches_a_broken_kernel(twin_dir, mutant):
    old, new = MUTANTS[mutant]
    assert ROW_SOURCE.count(old) == 1
    broken = BlockTwinLauncher(twin_dir, ROW_SOURCE.replace(old, new))
    s, y, kw = make_inputs("float32", OPTIONS["smooth"], n=8, c=700, seed=9)
    got, _ = fused_row(broken, twin_dir, s, y, plan={"per_thread": 4, "block_threads": 256}, **kw)
    assert broken.plans[-1].group == 256
    with pytest.raises(AssertionError):
        assert_like_reference(got, s, y, **kw)


def test_block_twin_bad_labels_stay_a_value_error():
    s = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"y\[1\] = 4 is out of range"):
        xs.softmax_loss(s, np.array([0, 4, 1]), engine="fused-row")


def test_block_twin_fused_row_needs_cupy_arrays():
    with pytest.raises(ValueError, match="engine='fused-row' runs when the scores are CuPy arrays"):
        xs.softmax_loss(np.zeros((2, 3)), np.array([0, 1]), engine="fused-row")


def test_block_twin_cupy_launcher_passes_the_kernel_signature(monkeypatch, twin_dir):
    # The GPU launcher (not runnable here) hands CuPy one argument per kernel
    # parameter, typed as the parameter: arrays for pointers, int64 for
    # long long, int32 for int. A fake kernel records what it is given.
    import re

    import xsoftmax._engines.cupy as engine

    signature = re.search(r"__global__ void xsoftmax_row_loss\((.*?)\) \{", ROW_SOURCE, re.S)[1]
    params = [p.strip() for p in signature.split(",")]
    seen = {}

    def fake_kernel(grid, block, args, shared_mem):
        seen.update(grid=grid, block=block, args=args, shared_mem=shared_mem)

    monkeypatch.setattr(engine, "_row_kernel", lambda *key: fake_kernel)
    s, y, kw = make_inputs("float16", OPTIONS["all"], label_dtype=np.int64)
    inp = check_loss_inputs(s, y, engine="fused-row", reduction="mean", **{"ignore_index": None, **kw})
    engine.fused_row_softmax_loss(inp, engine._cupy_row_launch, TwinLauncher(twin_dir), np,
                                  limit_bytes=LIMIT)
    plan = row_plan(*s.shape, 2, limit_bytes=LIMIT)
    assert seen["grid"] == (plan.grid,) and seen["block"] == (plan.threads,)
    assert seen["shared_mem"] == plan.shared_bytes
    assert len(params) == len(seen["args"]) == 16
    for param, arg in zip(params, seen["args"], strict=True):
        if "*" in param:  # the vectors contiguous; s and d are read through their row stride
            assert isinstance(arg, np.ndarray), param
            assert arg.flags.c_contiguous or param.endswith((" s", " d")), param
        elif param.startswith("long long"):
            assert type(arg) is np.int64, param
        else:
            assert param.startswith("int ") and type(arg) is np.int32, param


# --- probability targets, z-loss and softcap (issue 15): xsoftmax_row_loss_x, against the oracle ---

from _cuda_cases import assert_like_oracle, cases, loss_inputs, make_case  # noqa: E402


def row_x(launcher, twin_dir, scores, y, *, out=None, limit_bytes=LIMIT, plan=None, **kw):
    """The fused-row driver on a hand-built ``LossInputs`` (the new keywords included)."""
    fallback = TwinLauncher(twin_dir)
    result = fused_row_softmax_loss(loss_inputs(scores, y, **kw), launcher, fallback, np,
                                    limit_bytes=limit_bytes, out=out, **(plan or {}))
    return result, fallback.calls


BLOCK_TARGET_CASES = [
    *(("float32", r, *case) for case in cases() for r in ("mean", "none")),
    *(("float16", "sum", t, "all", e) for t in ("labels", "probs") for e in ("z+cap", "cap")),
    *(("float64", "mean", t, "all", "z+cap") for t in ("labels", "probs")),
]


@pytest.mark.parametrize("dtype,reduction,target,option,extra", BLOCK_TARGET_CASES,
                         ids=["block_twin-" + "-".join(c) for c in BLOCK_TARGET_CASES])
def test_block_twin_targets_match_oracle(launcher, twin_dir, dtype, reduction, target, option, extra):
    s, y, kw = make_case(dtype, target, option, extra)
    original = s.copy(), y.copy()
    got, fallback = row_x(launcher, twin_dir, s, y, reduction=reduction, **kw)
    assert fallback == []
    assert_like_oracle(got, s, y, reduction=reduction, **kw)
    np.testing.assert_array_equal(s, original[0])
    np.testing.assert_array_equal(y, original[1])
    cap = "true" if "softcap" in kw else "false"
    if target == "probs":
        assert launcher.names[-1].endswith(f"{cap}, true>")
    else:  # softcap=None and z_loss=0 are the plain kernel (the existing tests)
        assert launcher.names[-1].startswith("xsoftmax_row_loss_x<") and launcher.names[-1].endswith(
            f"{cap}, false>")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", ("float32", "float16"))
@pytest.mark.parametrize("c,plan", [(1, {}), (45, {}), (700, {"per_thread": 4, "block_threads": 256})],
                         ids=["C1", "C45", "C700-group256"])
def test_block_twin_targets_adversarial_rows(launcher, twin_dir, dtype, c, plan):
    # ±1e4 under a softcap (z = ±c, factor exactly 0), -inf masks (-c under the cap), q = 0 at a
    # mask, C = 1, C not a multiple of 32, and a 256-thread group (cross-warp reductions).
    for target in ("labels", "probs"):
        s, y, kw = make_case(dtype, target, "all", "z+cap", n=12, c=c, seed=4)
        if c > 1:
            s[4, [0, 3, 5]] = -np.inf
            s[6, :] = 1e4
            s[7, 1] = -1e4
            if target == "probs":
                y[4, [0, 3]] = 0
        floor = 1.0 if c == 1 else 1e-30
        got, _ = row_x(launcher, twin_dir, s, y, reduction="none", plan=plan, **kw)
        assert np.isfinite(got[1]).all()
        assert_like_oracle(got, s, y, reduction="none", floor=floor, **kw)
        if c > 1 and plan:
            assert launcher.plans[-1].group == 256
        kw.pop("softcap")
        kw["label_smoothing"] = 0.0
        if dtype == "float16":
            kw.pop("z_loss")  # ζ lse² at lse = 1e4 is 5e6: past float16's range
        got, _ = row_x(launcher, twin_dir, s, y, reduction="none", plan=plan, **kw)
        assert_like_oracle(got, s, y, reduction="none", floor=floor, **kw)
        if c > 1 and target == "probs":
            assert np.isnan(got[0][4]) and np.isfinite(got[1][4]).all()  # 0 · inf, as torch


@pytest.mark.parametrize("target", ("labels", "probs"))
def test_block_twin_targets_out_in_place_and_strided(launcher, twin_dir, target):
    s, y, kw = make_case("float16", target, "all", "z+cap", n=20, c=45, seed=2)
    ref = row_x(launcher, twin_dir, s, y, **kw)[0]
    assert_like_oracle(ref, s, y, **kw)

    inplace = s.copy()
    loss, d = row_x(launcher, twin_dir, inplace, y, out=inplace, **kw)[0]
    assert d is inplace
    np.testing.assert_array_equal(d, ref[1])
    np.testing.assert_array_equal(loss, ref[0])

    # Rows (and probability rows) of larger buffers, read through their row strides.
    big = np.zeros((40, 45), s.dtype)
    big[::2] = s
    ys = y
    if target == "probs":
        qbig = np.zeros((20, 60), y.dtype)
        qbig[:, 5:50] = y
        ys = qbig[:, 5:50]
    out_big = np.full((20, 90), 7, s.dtype)
    loss, d = row_x(launcher, twin_dir, big[::2], ys, out=out_big[:, 10:55], **kw)[0]
    np.testing.assert_array_equal(d, ref[1])
    assert (out_big[:, :10] == 7).all() and (out_big[:, 55:] == 7).all()

    # Transposed (class-strided) scores and probabilities: copied once, equal results.
    yt = np.asfortranarray(y) if target == "probs" else y
    got = row_x(launcher, twin_dir, np.asfortranarray(s), yt, **kw)[0]
    np.testing.assert_array_equal(got[1], ref[1])


def test_block_twin_probabilities_on_chip_and_other_dtypes(launcher, twin_dir):
    # float16 scores with float64 probabilities: q is read as float32 (one cast), staged on chip
    # after the scores (2 + 4 bytes a class, 16 bytes of alignment); a row past the limit runs
    # the fused kernels.
    s, y, kw = make_case("float16", "probs", "all", "z+cap", n=9, c=50, q_dtype="float64")
    got, fallback = row_x(launcher, twin_dir, s, y, reduction="sum", **kw)
    assert fallback == [] and ", float, true, true>" in launcher.names[-1]
    assert_like_oracle(got, s, y, reduction="sum", **kw)
    c_fit = (4096 - 768 - 16) // 6
    for c, runs_row in ((c_fit, True), (c_fit + 1, False)):
        s, y, kw = make_case("float16", "probs", "smooth", "z+cap", n=6, c=c, q_dtype="float32")
        got, fallback = row_x(launcher, twin_dir, s, y, reduction="none", limit_bytes=4096, **kw)
        assert fallback == ([] if runs_row else ["lse_cap", "prob_cap", "grad_prob_cap"])
        assert_like_oracle(got, s, y, reduction="none", **kw)


X_MUTANTS = {
    # the softcap's chain factor left out of the row gradient
    "no-cap-factor": ("if constexpr (CAP) g *= ((F)1 - th) * ((F)1 + th);", ""),
    # Q read without the class weights
    "unweighted-q": ("qsum[0] += w[k] * qk;", "qsum[0] += qk;"),
    # z-loss term without the shift: c + zc l instead of c + zc (m + l)
    "lse-without-m": ("cc += coef_zc[row] * (m + l);", "cc += coef_zc[row] * l;"),
}


@pytest.mark.parametrize("mutant", sorted(X_MUTANTS))
def test_block_twin_targets_catch_a_broken_kernel(twin_dir, mutant):
    old, new = X_MUTANTS[mutant]
    assert ROW_SOURCE.count(old) == 1
    broken = BlockTwinLauncher(twin_dir, ROW_SOURCE.replace(old, new))
    s, y, kw = make_case("float32", "probs", "weight", "z+cap", n=8, c=40, seed=9)
    s += 3.0  # the row maximum matters to the z-loss
    got, _ = row_x(broken, twin_dir, s, y, reduction="none", **kw)
    with pytest.raises(AssertionError, match="differs from the oracle"):
        assert_like_oracle(got, s, y, reduction="none", **kw)


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 40, 3, 5)], ids=["k1", "k2"])
@pytest.mark.parametrize("target", ["labels", "probs"])
def test_block_twin_k_dim_through_the_public_layer(launcher, twin_dir, monkeypatch, target, shape):
    from _cuda_cases import kdim_case, public_through

    def engine(inp, /, *, out=None):
        return fused_row_softmax_loss(inp, launcher, TwinLauncher(twin_dir), np, limit_bytes=LIMIT, out=out)

    public_through(monkeypatch, engine)
    s, y, kw = kdim_case("float32", target, shape)
    for reduction in REDUCTIONS:
        got = xs.softmax_loss(s, y, reduction=reduction, engine="fused", **kw)
        assert_like_oracle(got, s, y, reduction=reduction, **kw)
        assert launcher.names[-1].startswith("xsoftmax_row_loss_x<float,")
