r"""The CuPy engines: ``"fused"`` (two reads, three with label smoothing, and one write of
the scores) and ``"fused-row"`` (one read and one write; :func:`softmax_loss_row`).

Per row ``i`` (see :mod:`xsoftmax._reduction` for ``a, b, c``, α, β):

1. one ``ReductionKernel`` pass gives ``m_i``, ``l_i = log Σ_k e^{s_ik − m_i}``
   and ``t_i = s_{i,y_i} − m_i`` with an online max/sum pair (with label
   smoothing a second pass gives ``u_i = Σ_k w_k (s_ik − m_i)``);
2. the loss ``α (l − t) + β (W l − u)``, reduced, comes from those ``(N,)``
   vectors through the shared :func:`~xsoftmax._reduction.row_loss` and
   :func:`~xsoftmax._reduction.reduce_loss`;
3. one ``ElementwiseKernel`` writes
   ``dscores_ik = c_i e^{s_ik − m_i − l_i} − a_i 1[k = y_i] − b_i w_k``
   straight into the result, or into ``out=``: no ``N × C`` temporary. With
   ``out=scores`` (the same array object) the scores are overwritten in
   place and nothing ``N × C`` is allocated at all; an ``out`` that merely
   overlaps the scores makes CuPy copy them first.

float16 scores are read as float16 and computed in float32 (the kernels'
``F``); the gradient is written back as float16. Indices are 64-bit
(CuPy's ``ptrdiff_t i``), so batches past 2^31 elements work, and any strides
of ``scores`` and ``out`` are read as they are. The kernel text lives in
:mod:`xsoftmax._engines._cuda_source`; :func:`fused_softmax_loss` is written
against a *launcher*, so the same driver runs the CuPy kernels on a GPU and
the CPU twin of the tests (the same strings built with g++) on NumPy.

``"fused-row"`` (:func:`fused_row_softmax_loss`) runs one ``RawModule``
kernel, ``xsoftmax_row_loss<T, I>`` of
:data:`~xsoftmax._engines._cuda_source.ROW_SOURCE`: a row is staged once in
shared memory, its max, ``l``, ``t`` and ``u`` reduced on chip, and the same
gradient written once. Rows longer than the device's opt-in shared memory per
block allows run the ``"fused"`` path. Its driver is written against a row
launcher too, so the tests' block twin (the same source built with g++ on a
header emulating CUDA blocks) runs it on NumPy. ``engine="auto"`` does not
choose it until a GPU measurement shows it faster (docs/backends.md).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Protocol

from .._backend import device
from .._dtypes import compute_dtype, narrow
from .._reduction import LossInputs, reduce_loss, row_coefficients, row_loss
from .._typing import Array
from ._cuda_source import (
    KERNELS,
    PREAMBLE,
    ROW_KERNEL_NAMES,
    ROW_SCORE_TYPES,
    ROW_SCRATCH_BYTES,
    ROW_SOURCE,
    ElementwiseSpec,
    ReductionSpec,
    row_kernel_name,
)

__all__ = [
    "Launcher",
    "RowLauncher",
    "RowPlan",
    "build_kernel",
    "fused_row_softmax_loss",
    "fused_softmax_loss",
    "kernels",
    "row_module",
    "row_options",
    "row_plan",
    "softmax_loss",
    "softmax_loss_row",
]


class Launcher(Protocol):
    """Runs kernel ``key`` of :data:`~xsoftmax._engines._cuda_source.KERNELS`.

    ``args`` are the kernel's inputs then its outputs, as a CuPy kernel call
    takes them: elementwise inputs broadcast against the ``(N, C)`` shape,
    raw inputs indexed flat. Reductions run over axis 1.
    """

    def __call__(self, key: str, *args: Any) -> None: ...


def build_kernel(spec: ReductionSpec | ElementwiseSpec, preamble: str = PREAMBLE) -> Any:
    """The CuPy kernel object of ``spec`` (compiled by CuPy on its first call)."""
    import cupy

    if isinstance(spec, ElementwiseSpec):
        return cupy.ElementwiseKernel(
            spec.in_params, spec.out_params, spec.operation, spec.name, preamble=preamble
        )
    return cupy.ReductionKernel(
        spec.in_params,
        spec.out_params,
        spec.map_expr,
        spec.reduce_expr,
        spec.post_map_expr,
        spec.identity,
        spec.name,
        reduce_type=spec.reduce_type,
        preamble=preamble,
    )


@functools.cache
def kernels() -> dict[str, Any]:
    """Every kernel of :data:`~xsoftmax._engines._cuda_source.KERNELS`, built once per process."""
    return {key: build_kernel(spec) for key, spec in KERNELS.items()}


def _cupy_launch(key: str, *args: Any) -> None:
    import cupy

    kernel = kernels()[key]
    if isinstance(KERNELS[key], ElementwiseSpec):
        # A C-contiguous raw vector is addressed directly; a strided one costs
        # 64-bit index arithmetic per element. They are (N,) or (C,): a copy,
        # if any, is small.
        args = tuple(
            cupy.ascontiguousarray(x) if isinstance(x, cupy.ndarray) and x.ndim == 1 else x
            for x in args
        )
        kernel(*args)
    else:
        kernel(*args, axis=1)


def fused_softmax_loss(
    inp: LossInputs, launch: Launcher, *, out: Array | None = None
) -> tuple[Array, Array]:
    """The fused engine's driver, for any launcher (see the module docstring)."""
    xp, s, y = inp.xp, inp.scores, inp.y
    n, c = s.shape
    fdt = compute_dtype(xp, s.dtype)
    dev = device(s)

    vec = lambda: xp.empty((n,), dtype=fdt, device=dev)  # noqa: E731
    m, l, t = vec(), vec(), vec()  # noqa: E741 (the l of the docstring)
    classes = xp.arange(c, dtype=xp.int64, device=dev)
    launch("lse", s, xp.expand_dims(y, axis=1), xp.expand_dims(classes, axis=0), m, l, t)

    w = None if inp.weight is None else xp.astype(inp.weight, fdt)
    coef = row_coefficients(inp._replace(weight=w), fdt)
    # Without smoothing b = 0 and w never matters: w = 1 keeps 0 · w exactly 0.
    w_or_one = w if w is not None else xp.ones((c,), dtype=fdt, device=dev)
    u = None
    if coef.b is not None:
        u = vec()
        launch("smooth", s, xp.expand_dims(m, axis=1), xp.expand_dims(w_or_one, axis=0), u)
    loss = reduce_loss(xp, coef, row_loss(xp, coef, l, t, u), inp.reduction)

    # The kernel reads per-row arrays (raw, contiguous); a coefficient shared
    # by every row (0-d) is spread over the rows (v · 1 = v, bit for bit).
    ones = xp.ones((n,), dtype=fdt, device=dev)
    b = coef.b if coef.b is not None else xp.zeros((), dtype=fdt, device=dev)
    a, c_, b = (v if v.ndim else ones * v for v in (coef.a, coef.c, b))
    d = out if out is not None else xp.empty(s.shape, dtype=s.dtype, device=dev)
    launch("grad", s, y, m, l, a, c_, b, w_or_one, c, d)
    return narrow(xp, loss, s.dtype), d


def softmax_loss(inp: LossInputs, /, *, out: Array | None = None) -> tuple[Array, Array]:
    """The ``"fused"`` engine for CuPy arrays (signature of every engine)."""
    if inp.z_loss or inp.softcap is not None or inp.y.ndim == 2:  # issue 15 options: reference for now
        from .reference import softmax_loss as reference  # (guard to be replaced by this engine's owner)

        return reference(inp, out=out)
    if inp.scores.shape[0] == 0 or inp.labels_unchecked:
        # Nothing to launch (or labels the kernels could not trust, which no
        # eager CuPy array produces): the reference engine's results.
        from .reference import softmax_loss as reference

        return reference(inp, out=out)
    return fused_softmax_loss(inp, _cupy_launch, out=out)


# --- the row-fused engine ("fused-row"): one read and one write of the scores ---


class RowPlan(NamedTuple):
    """How ``xsoftmax_row_loss`` is launched: ``group`` threads per row, ``rows`` rows per block."""

    group: int
    rows: int
    threads: int
    grid: int
    shared_bytes: int


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, x).bit_length() - 1)


def row_plan(
    n: int,
    c: int,
    itemsize: int,
    *,
    limit_bytes: int,
    block_threads: int = 256,
    per_thread: int = 8,
    max_threads: int = 1024,
    max_grid: int = 2**31 - 1,
) -> RowPlan | None:
    """The launch of the row kernel for ``(n, c)`` scores of ``itemsize`` bytes; None if a row is too long.

    A row is on chip when ``ROW_SCRATCH_BYTES + c · itemsize ≤ limit_bytes``
    (the dynamic shared memory one block may have). A row gets
    ``group = 2^⌈log2(c / per_thread)⌉`` threads (at most ``max_threads``);
    a block gets ``block_threads / group`` rows (fewer if their shared memory
    does not fit), so C = 10 packs 128 rows into a 256-thread block. Blocks
    have at least one warp; the grid loops over the rows past ``max_grid``.
    """
    for name, v in (("block_threads", block_threads), ("max_threads", max_threads)):
        if v < 32 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two >= 32, got {v}")
    row_bytes = c * itemsize
    if ROW_SCRATCH_BYTES + row_bytes > limit_bytes:
        return None
    group = min(1 << max(0, math.ceil(c / per_thread) - 1).bit_length(), max_threads)
    threads = min(max(block_threads, group), max_threads)
    rows = min(threads // group, _pow2_floor((limit_bytes - ROW_SCRATCH_BYTES) // row_bytes))
    if rows * group < 32:  # too few rows fit for a warp: more threads per row
        group = 32 // rows
    grid = max(1, min(-(-n // rows), max_grid))
    return RowPlan(group, rows, rows * group, grid, ROW_SCRATCH_BYTES + rows * row_bytes)


class RowLauncher(Protocol):
    """Runs ``xsoftmax_row_loss<scores, labels>`` with ``plan`` and the kernel's arguments."""

    def __call__(self, plan: RowPlan, scores: str, labels: str, *args: Any) -> None: ...


def fused_row_softmax_loss(
    inp: LossInputs,
    launch: RowLauncher,
    fallback: Launcher,
    native: Any,
    *,
    limit_bytes: int,
    out: Array | None = None,
    **plan_options: Any,
) -> tuple[Array, Array]:
    """The ``"fused-row"`` driver, for any launcher: one kernel reads and writes each row once.

    ``native`` is the arrays' own module (``cupy``, or ``numpy`` for the
    block twin) for layout-level copies. Rows longer than ``limit_bytes``
    allows go to :func:`fused_softmax_loss` with ``fallback``. The loss is
    ``row_loss``/``reduce_loss`` of the kernel's ``l, t, u``, as in the fused
    engine; ``dscores`` is the gradient of its module docstring.
    """
    xp, s, y = inp.xp, inp.scores, inp.y
    n, c = s.shape
    plan = row_plan(n, c, s.dtype.itemsize, limit_bytes=limit_bytes, **plan_options)
    if plan is None or s.dtype.name not in ROW_SCORE_TYPES:
        return fused_softmax_loss(inp, fallback, out=out)
    fdt = compute_dtype(xp, s.dtype)
    if y.dtype.name not in ("int32", "int64"):
        y = xp.astype(y, xp.int64)
    y = native.ascontiguousarray(y)

    # The kernel reads a row through its row stride at unit class stride; a
    # row that is not contiguous, or scores that overlap another out=, are
    # copied once. out=scores itself needs no copy: each element is read and
    # written by the same thread, the write after the read.
    if s.strides[1] != s.itemsize or (out is not None and out is not s and native.may_share_memory(out, s)):
        s = native.ascontiguousarray(s)
    direct = out is not None and out.strides[1] == out.itemsize and (out.strides[0] != 0 or n == 1)
    d: Array = out if out is not None and direct else native.empty((n, c), dtype=s.dtype)

    w = None if inp.weight is None else xp.astype(inp.weight, fdt)
    coef = row_coefficients(inp._replace(weight=w), fdt)
    vec = lambda: native.empty((n,), dtype=fdt)  # noqa: E731
    l, t = vec(), vec()  # noqa: E741 (the l of the docstring)
    smooth = coef.b is not None
    u = vec() if smooth else l  # never written without smoothing
    # b and w are read only with smoothing; w = 1 stands for "no weights".
    # The kernel reads per-row arrays; a coefficient shared by every row (0-d)
    # is spread over the rows (v · 1 = v, bit for bit).
    ones = native.ones((n,), dtype=fdt)
    a_rows, c_rows = (native.ascontiguousarray(v if v.ndim else ones * v) for v in (coef.a, coef.c))
    b = (native.ascontiguousarray(coef.b if coef.b.ndim else ones * coef.b)) if coef.b is not None else a_rows
    w_arg = native.ascontiguousarray(w) if w is not None else native.ones((c,), dtype=fdt)
    launch(
        plan, s.dtype.name, y.dtype.name,
        s, s.strides[0] // s.itemsize, y, n, c,
        a_rows, c_rows, b, w_arg,
        int(smooth), plan.group, l, t, u, d, d.strides[0] // d.itemsize,
    )
    loss = reduce_loss(xp, coef, row_loss(xp, coef, l, t, u if smooth else None), inp.reduction)
    if out is not None and not direct:
        out[...] = d
        d = out
    return narrow(xp, loss, s.dtype), d


@functools.cache
def row_module() -> Any:
    """The ``RawModule`` of :data:`~xsoftmax._engines._cuda_source.ROW_SOURCE`, every instantiation."""
    import cupy

    return cupy.RawModule(code=ROW_SOURCE, options=row_options(), name_expressions=ROW_KERNEL_NAMES)


def row_options() -> tuple[str, ...]:
    """NVRTC options of the row module: C++17 and the include directories CuPy's own kernels use.

    ``ROW_SOURCE`` includes ``cuda_fp16.h`` / ``cuda_bf16.h``; CuPy finds them
    for its kernels through ``assemble_cupy_compiler_options`` (CuPy's headers
    and the CUDA toolkit's); a CuPy without that function keeps RawModule's default.
    """
    try:
        from cupy._core import core

        assembled = tuple(core.assemble_cupy_compiler_options(()))
    except (ImportError, AttributeError, RuntimeError):
        assembled = ()
    return ("--std=c++17", *(o for o in assembled if o.startswith("-I")))


@functools.cache
def _row_kernel(scores: str, labels: str, shared_bytes: int) -> Any:
    kernel = row_module().get_function(row_kernel_name(scores, labels))
    if shared_bytes > 48 * 1024:  # past 48 KiB a block must opt in to its dynamic shared memory
        kernel.max_dynamic_shared_size_bytes = shared_bytes
    return kernel


def _cupy_row_launch(plan: RowPlan, scores: str, labels: str, *args: Any) -> None:
    import numpy as np

    # Python ints would be passed as 64-bit; the kernel's ints are 32-bit.
    typed = [np.int64(a) if i in (1, 3, 4, 15) else np.int32(a) if i in (9, 10) else a
             for i, a in enumerate(args)]
    kernel = _row_kernel(scores, labels, plan.shared_bytes)
    kernel((plan.grid,), (plan.threads,), tuple(typed), shared_mem=plan.shared_bytes)


@functools.cache
def _row_limits(device_id: int, scores: str, labels: str) -> tuple[int, int]:
    """(opt-in shared memory per block of the device, max threads per block of this instantiation).

    The second comes from the compiled kernel: float64 needs more than 64
    registers a thread, so its blocks stop at 512 threads.
    """
    import cupy

    attrs = cupy.cuda.Device(device_id).attributes
    kernel = row_module().get_function(row_kernel_name(scores, labels))
    return int(attrs["MaxSharedMemoryPerBlockOptin"]), int(kernel.max_threads_per_block)


def softmax_loss_row(inp: LossInputs, /, *, out: Array | None = None) -> tuple[Array, Array]:
    """The ``"fused-row"`` engine for CuPy arrays (signature of every engine)."""
    if inp.z_loss or inp.softcap is not None or inp.y.ndim == 2:  # issue 15 options: reference for now
        from .reference import softmax_loss as reference  # (guard to be replaced by this engine's owner)

        return reference(inp, out=out)
    s = inp.scores
    if s.shape[0] == 0 or inp.labels_unchecked or s.dtype.name not in ROW_SCORE_TYPES:
        from .reference import softmax_loss as reference

        return reference(inp, out=out)
    import cupy

    labels = "int32" if inp.y.dtype.name == "int32" else "int64"  # as the driver passes them
    limit, max_threads = _row_limits(cupy.cuda.Device().id, s.dtype.name, labels)
    return fused_row_softmax_loss(
        inp, _cupy_row_launch, _cupy_launch, cupy, limit_bytes=limit, out=out,
        max_threads=_pow2_floor(max_threads),
    )
