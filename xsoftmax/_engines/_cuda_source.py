r"""The CUDA source of the CuPy engine: every kernel string, in one place.

The strings are plain text, importable without CuPy, so the GPU kernels
(:mod:`xsoftmax._engines.cupy` builds them from these specs) and the two
proofs that run without a GPU use *the same text*: the ``nvrtc`` tests
compile the source CuPy generates from it, the ``cpu_twin`` tests build it
with the system C++ compiler into a loop over NumPy buffers.

Per row ``i`` of the scores ``s`` (``N × C``; the type ``F`` is the compute
type: float32 for float16 scores, else the scores' own type):

* :data:`LSE` (one read of the row) gives ``m_i`` (the max, reset to 0 when
  not finite), ``l_i = log Σ_k exp(s_ik − m_i)`` and ``t_i = s_{i,y_i} − m_i``
  with the online pair ``(m, d = Σ exp(s − m))``: two partial states merge as

  .. math::  m = \max(m_a, m_b),\quad d = d_a e^{m_a − m} + d_b e^{m_b − m},

  so the thread-partials of a block combine in any order and the maximum
  never has to be known in advance;
* :data:`SMOOTH` (a second read, with label smoothing only) gives
  ``u_i = Σ_k w_k (s_ik − m_i)``;
* :data:`GRAD` writes the whole gradient in one pass, with no ``N × C``
  temporary: ``d_ik = c_i exp(s_ik − m_i − l_i) − a_i 1[k = y_i] − b_i w_k``
  with the per-row coefficients of :mod:`xsoftmax._reduction`.

The loss (``row_loss`` / ``reduce_loss``) is assembled from ``l, t, u`` by the
shared Array API code. Labels are only ever *compared* with the class index,
never used as an index, so no label value can make a kernel read out of
bounds.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["GRAD", "KERNELS", "LSE", "PREAMBLE", "SMOOTH", "ElementwiseSpec", "ReductionSpec"]

#: Device helpers shared by every kernel. ``__int_as_float`` (a CUDA
#: intrinsic, provided by the CPU twin) spells +inf because NVRTC defines
#: neither ``INFINITY`` nor ``__builtin_huge_valf``.
PREAMBLE = r"""
template <typename F>
struct xsoftmax_lse_state {
  F m;  // running max of the values seen so far
  F d;  // sum of exp(x - m) over those values
  F t;  // the target logit, 0 until (and unless) it is seen
};

template <typename F>
__device__ __forceinline__ F xsoftmax_inf() {
  return (F)__int_as_float(0x7f800000);
}

template <typename F>
__device__ __forceinline__ xsoftmax_lse_state<F> xsoftmax_lse_identity() {
  xsoftmax_lse_state<F> r = {-xsoftmax_inf<F>(), (F)0, (F)0};
  return r;
}

// A -inf logit contributes exp(-inf) = 0, not exp(-inf - (-inf)) = NaN.
template <typename F>
__device__ __forceinline__ xsoftmax_lse_state<F> xsoftmax_lse_leaf(F x, bool is_target) {
  xsoftmax_lse_state<F> r = {x, x == -xsoftmax_inf<F>() ? (F)0 : (F)1, is_target ? x : (F)0};
  return r;
}

// d * exp(m_old - m_new), skipping the exp when the max did not move: that
// keeps empty (-inf) partials at 0 instead of exp(NaN).
template <typename F>
__device__ __forceinline__ F xsoftmax_rescale(F d, F m_old, F m_new) {
  return m_old == m_new ? d : d * exp(m_old - m_new);
}

template <typename F>
__device__ __forceinline__ xsoftmax_lse_state<F> xsoftmax_lse_merge(
    const xsoftmax_lse_state<F>& a, const xsoftmax_lse_state<F>& b) {
  xsoftmax_lse_state<F> r;
  r.m = (a.m > b.m || a.m != a.m) ? a.m : b.m;  // a NaN max propagates
  r.d = xsoftmax_rescale(a.d, a.m, r.m) + xsoftmax_rescale(b.d, b.m, r.m);
  r.t = a.t + b.t;  // exactly one leaf of a row is the target
  return r;
}

// Reports m reset to 0 when not finite, as the reference engine does, and
// l, t relative to it: an all -inf row gives l = -inf, a +inf logit l = +inf.
template <typename F>
__device__ __forceinline__ void xsoftmax_lse_finish(
    const xsoftmax_lse_state<F>& a, F& m, F& l, F& t) {
  m = isfinite(a.m) ? a.m : (F)0;
  l = a.m == xsoftmax_inf<F>() ? a.m : log(a.d);
  t = a.t - m;
}
"""


class ReductionSpec(NamedTuple):
    """The arguments of a ``cupy.ReductionKernel`` (reduced over axis 1)."""

    name: str
    in_params: str
    out_params: str
    map_expr: str
    reduce_expr: str
    post_map_expr: str
    identity: str
    reduce_type: str


class ElementwiseSpec(NamedTuple):
    """The arguments of a ``cupy.ElementwiseKernel``."""

    name: str
    in_params: str
    out_params: str
    operation: str


#: Row max, log-sum-exp and target logit in one read. ``y`` (N, 1) and the
#: class index ``k`` (1, C) are broadcast inputs: a ReductionKernel over
#: axis 1 cannot take raw parameters (CuPy permutes the reduced axis first).
LSE = ReductionSpec(
    name="xsoftmax_row_lse",
    in_params="T s, I y, int64 k",
    out_params="F m, F l, F t",
    map_expr="xsoftmax_lse_leaf<F>((F)s, k == y)",
    reduce_expr="xsoftmax_lse_merge(a, b)",
    post_map_expr="xsoftmax_lse_finish(a, m, l, t)",
    identity="xsoftmax_lse_identity<F>()",
    reduce_type="xsoftmax_lse_state<F>",
)

#: ``u_i = Σ_k w_k (s_ik − m_i)`` (label smoothing only); ``m`` is (N, 1), ``w`` (1, C).
SMOOTH = ReductionSpec(
    name="xsoftmax_row_smooth_sum",
    in_params="T s, F m, F w",
    out_params="F u",
    map_expr="w * ((F)s - m)",
    reduce_expr="a + b",
    post_map_expr="u = a",
    identity="0",
    reduce_type="F",
)

#: The stabilized gradient in one pass. ``i`` is CuPy's C-order index over the
#: (N, C) output (``ptrdiff_t``), so rows past 2^31 elements are addressed
#: with 64-bit arithmetic; per-row and per-class arrays are raw (contiguous).
GRAD = ElementwiseSpec(
    name="xsoftmax_softmax_grad",
    in_params=(
        "T s, raw I y, raw F m, raw F l, raw F a, raw F c, raw F b, raw F w, int64 num_classes"
    ),
    out_params="T d",
    operation=(
        "const ptrdiff_t row = i / num_classes, k = i - row * num_classes;\n"
        "d = (T)(c[row] * exp((F)s - m[row] - l[row])"
        " - (k == y[row] ? a[row] : (F)0) - b[row] * w[k]);"
    ),
)

#: Every kernel the engine ships, by the key the engine launches it with.
KERNELS: dict[str, ReductionSpec | ElementwiseSpec] = {"lse": LSE, "smooth": SMOOTH, "grad": GRAD}
