r"""The fused CuPy engine: two reads (three with label smoothing) and one write of the scores.

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
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

from .._backend import device
from .._dtypes import compute_dtype, narrow
from .._reduction import LossInputs, reduce_loss, row_coefficients, row_loss
from .._typing import Array
from ._cuda_source import KERNELS, PREAMBLE, ElementwiseSpec, ReductionSpec

__all__ = ["Launcher", "build_kernel", "fused_softmax_loss", "kernels", "softmax_loss"]


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
    if inp.scores.shape[0] == 0 or inp.labels_unchecked:
        # Nothing to launch (or labels the kernels could not trust, which no
        # eager CuPy array produces): the reference engine's results.
        from .reference import softmax_loss as reference

        return reference(inp, out=out)
    return fused_softmax_loss(inp, _cupy_launch, out=out)
