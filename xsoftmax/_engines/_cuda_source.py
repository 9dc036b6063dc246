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

Issue 15's options are separate kernels, so the plain ones above run unchanged:
softcap (``z = c tanh(s/c)``) is read inside the element load of the ``_cap``
variants (:data:`LSE_CAP`, :data:`SMOOTH_CAP`, :data:`PROB_CAP`) and its factor
``1 − tanh²(s/c)`` multiplies the gradient in :data:`GRAD_CAP` /
:data:`GRAD_PROB_CAP`; probability targets ``q`` get one reduction over the row
and ``q`` (:data:`PROB`: ``Q_i`` and ``uq'_i``) and a gradient reading ``q``
(:data:`GRAD_PROB`: ``T_ik = w_k q_ik``); z-loss only changes ``c_i`` to
``c_i + zc_i lse_i`` on the host.

The loss (``row_loss`` / ``reduce_loss``) is assembled from ``l, t, u`` by the
shared Array API code. Labels are only ever *compared* with the class index,
never used as an index, so no label value can make a kernel read out of
bounds.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "ElementwiseSpec",
    "GRAD",
    "GRAD_CAP",
    "GRAD_PROB",
    "GRAD_PROB_CAP",
    "KERNELS",
    "LSE",
    "LSE_CAP",
    "PREAMBLE",
    "PROB",
    "PROB_CAP",
    "ROW_KERNEL_NAMES",
    "ROW_LABEL_TYPES",
    "ROW_SCORE_TYPES",
    "ROW_SCRATCH_BYTES",
    "ROW_SOURCE",
    "ReductionSpec",
    "SMOOTH",
    "SMOOTH_CAP",
    "row_kernel_name",
    "row_kernel_x_name",
    "row_probability_types",
]

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

// softcap: z = c tanh(s / c). -inf becomes -c, NaN stays NaN, +-1e4 gives +-c.
template <typename F>
__device__ __forceinline__ F xsoftmax_softcap(F x, F cap) {
  return cap * tanh(x / cap);
}

// Probability targets: the row sums (Q, uq') = sum_k (w_k q_k, w_k q'_k x_k), x = z - m, with
// q' = qa q + qb = (1 - eps) q + eps / C mixed first, as torch does: a -inf logit where q' = 0
// gives 0 * -inf = NaN (torch's -sum w q log_softmax), where q' > 0 +inf.
template <typename F>
struct xsoftmax_prob_sums {
  F q;
  F uq;
};

template <typename F>
__device__ __forceinline__ xsoftmax_prob_sums<F> xsoftmax_prob_zero() {
  xsoftmax_prob_sums<F> r = {(F)0, (F)0};
  return r;
}

template <typename F>
__device__ __forceinline__ xsoftmax_prob_sums<F> xsoftmax_prob_leaf(F x, F w, F q, F qa, F qb) {
  xsoftmax_prob_sums<F> r = {w * q, w * (qa * q + qb) * x};
  return r;
}

template <typename F>
__device__ __forceinline__ xsoftmax_prob_sums<F> xsoftmax_prob_add(
    const xsoftmax_prob_sums<F>& a, const xsoftmax_prob_sums<F>& b) {
  xsoftmax_prob_sums<F> r = {a.q + b.q, a.uq + b.uq};
  return r;
}

// The gradient of one element before the softcap factor:
// (c + zc lse) p - a T - b w, with the row's c already holding zc lse.
template <typename F>
__device__ __forceinline__ F xsoftmax_grad_value(F z, F m, F l, F c, F a_target, F b_w) {
  return c * exp(z - m - l) - a_target - b_w;
}

// d = g * dz/ds with t = tanh(s / c): (1 - t)(1 + t), accurate near saturation.
template <typename F>
__device__ __forceinline__ F xsoftmax_softcap_grad(F g, F t) {
  return g * (((F)1 - t) * ((F)1 + t));
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

# --- probability targets and softcap: new kernels, so the plain ones above stay as they are ---

_CAPPED = "xsoftmax_softcap<F>((F)s, cap)"

#: :data:`LSE` on the capped logits ``z = c tanh(s/c)`` (``cap`` is a 0-d ``F`` array).
LSE_CAP = LSE._replace(
    name="xsoftmax_row_lse_cap",
    in_params="T s, I y, int64 k, F cap",
    map_expr=f"xsoftmax_lse_leaf<F>({_CAPPED}, k == y)",
)

#: :data:`SMOOTH` on the capped logits.
SMOOTH_CAP = SMOOTH._replace(
    name="xsoftmax_row_smooth_sum_cap",
    in_params="T s, F m, F w, F cap",
    map_expr=f"w * ({_CAPPED} - m)",
)

#: Probability targets ``q`` (``Q``: any floating type, read as ``F``): one read of the row and
#: of ``q`` gives ``Q_i = Σ_k w_k q_ik`` and ``uq'_i = Σ_k w_k q'_ik (s_ik − m_i)`` with the
#: smoothed ``q' = qa q + qb = (1 − ε) q + ε/C`` (0-d ``qa``, ``qb``; ``1``, ``0`` without smoothing).
PROB = ReductionSpec(
    name="xsoftmax_row_prob_sums",
    in_params="T s, Q q, F m, F w, F qa, F qb",
    out_params="F qs, F uq",
    map_expr="xsoftmax_prob_leaf<F>((F)s - m, w, (F)q, qa, qb)",
    reduce_expr="xsoftmax_prob_add(a, b)",
    post_map_expr="qs = a.q, uq = a.uq",
    identity="xsoftmax_prob_zero<F>()",
    reduce_type="xsoftmax_prob_sums<F>",
)

#: :data:`PROB` on the capped logits.
PROB_CAP = PROB._replace(
    name="xsoftmax_row_prob_sums_cap",
    in_params="T s, Q q, F m, F w, F qa, F qb, F cap",
    map_expr=f"xsoftmax_prob_leaf<F>({_CAPPED} - m, w, (F)q, qa, qb)",
)

_ROW_CLASS = "const ptrdiff_t row = i / num_classes, k = i - row * num_classes;\n"
_RAW_ROWS = "raw F m, raw F l, raw F a, raw F c, raw F b, raw F w, int64 num_classes"

#: :data:`GRAD` chained through the softcap: ``d = [c e^{z − m − l} − a 1[k = y] − b w_k](1 − t²)``
#: with ``t = tanh(s/c)``, ``z = c t``.
GRAD_CAP = ElementwiseSpec(
    name="xsoftmax_softmax_grad_cap",
    in_params=f"T s, raw I y, {_RAW_ROWS}, F cap",
    out_params="T d",
    operation=(
        _ROW_CLASS + "const F t = tanh((F)s / cap);\n"
        "d = (T)xsoftmax_softcap_grad(xsoftmax_grad_value(cap * t, m[row], l[row], c[row],"
        " k == y[row] ? a[row] : (F)0, b[row] * w[k]), t);"
    ),
)

#: The gradient for probability targets: ``d = c_i e^{s − m − l} − a_i w_k q_ik − b_i w_k``
#: (``c_i = a Q_i + b W``, plus the z-loss ``zc_i lse_i``, computed by the driver).
GRAD_PROB = ElementwiseSpec(
    name="xsoftmax_softmax_grad_prob",
    in_params=f"T s, Q q, {_RAW_ROWS}",
    out_params="T d",
    operation=(
        _ROW_CLASS + "d = (T)xsoftmax_grad_value((F)s, m[row], l[row], c[row],"
        " a[row] * (w[k] * (F)q), b[row] * w[k]);"
    ),
)

#: :data:`GRAD_PROB` chained through the softcap.
GRAD_PROB_CAP = ElementwiseSpec(
    name="xsoftmax_softmax_grad_prob_cap",
    in_params=f"T s, Q q, {_RAW_ROWS}, F cap",
    out_params="T d",
    operation=(
        _ROW_CLASS + "const F t = tanh((F)s / cap);\n"
        "d = (T)xsoftmax_softcap_grad(xsoftmax_grad_value(cap * t, m[row], l[row], c[row],"
        " a[row] * (w[k] * (F)q), b[row] * w[k]), t);"
    ),
)

#: Every kernel the engine ships, by the key the engine launches it with (``_cap``: softcap).
KERNELS: dict[str, ReductionSpec | ElementwiseSpec] = {
    "lse": LSE, "smooth": SMOOTH, "grad": GRAD,
    "lse_cap": LSE_CAP, "smooth_cap": SMOOTH_CAP, "prob": PROB, "prob_cap": PROB_CAP,
    "grad_cap": GRAD_CAP, "grad_prob": GRAD_PROB, "grad_prob_cap": GRAD_PROB_CAP,
}


#: Bytes at the start of the row kernel's dynamic shared memory that hold the
#: cross-warp partials (3 sums × 32 warps × 8 bytes); the rows follow.
ROW_SCRATCH_BYTES = 3 * 32 * 8

#: The row-fused kernel ``xsoftmax_row_loss<T, I>`` (the ``"fused-row"``
#: engine): a group of ``group`` threads (a power of two, 1-1024) owns a row;
#: a block holds ``blockDim.x / group`` rows, each staged once in shared
#: memory as ``T``. Per row:
#:
#: 1. read the row from global memory into shared memory, with the group's
#:    max (warp shuffles, then one shared-memory pass when a group spans
#:    several warps); ``m`` is the max, reset to 0 when not finite;
#: 2. from shared memory: ``Σ exp(s − m)``, ``t = s_y − m`` and, with
#:    smoothing, ``u = Σ w_k (s_k − m)``, reduced the same way;
#:    ``l = log Σ`` (``+inf`` when the max is ``+inf``);
#: 3. from shared memory: ``d_k = c e^{s_k − m − l} − a 1[k = y] − b w_k``,
#:    written once, through the row stride of ``d`` (``d`` may be ``s``: the
#:    row is in shared memory before any of it is written).
#:
#: ``xsoftmax_row_loss_x<T, I, P, CAP, PROB>`` runs the same body with the options:
#: ``CAP`` reads ``z = c tanh(s/c)`` from the staged row in each pass and multiplies the
#: gradient by ``1 − tanh²``; ``PROB`` stages the row of ``q`` (type ``P``) after every
#: row's scores (16-byte aligned), so ``q`` too is read once, and reduces ``Q`` and
#: ``uq'`` (``q' = qa q + qb``, torch's smoothing order) with ``c = a Q + b W``; ``zloss``
#: adds ``zc (m + l)`` to ``c`` and writes ``m``. The plain kernel is the body with every
#: flag off, its arithmetic unchanged.
#:
#: Every thread of a block runs every shuffle and barrier (rows past ``n``
#: take part with identity values), as ``__shfl_xor_sync(0xffffffff, ...)``
#: and ``__syncthreads`` require. Offsets are 64-bit; the label is only
#: compared with ``k``. No atomics: each row's outputs have one writer.
ROW_SOURCE = r"""
#ifndef XSOFTMAX_BLOCK_TWIN
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

template <typename T> struct xsoftmax_compute { typedef float type; };
template <> struct xsoftmax_compute<double> { typedef double type; };

__device__ __forceinline__ float xsoftmax_load(float x) { return x; }
__device__ __forceinline__ double xsoftmax_load(double x) { return x; }
__device__ __forceinline__ float xsoftmax_load(__half x) { return __half2float(x); }
__device__ __forceinline__ float xsoftmax_load(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ void xsoftmax_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void xsoftmax_store(double* p, double v) { *p = v; }
__device__ __forceinline__ void xsoftmax_store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void xsoftmax_store(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

__device__ __forceinline__ float xsoftmax_exp(float x) { return expf(x); }
__device__ __forceinline__ double xsoftmax_exp(double x) { return exp(x); }
__device__ __forceinline__ float xsoftmax_log(float x) { return logf(x); }
__device__ __forceinline__ double xsoftmax_log(double x) { return log(x); }

// x - x is 0 exactly for finite x, NaN for ±inf and NaN.
template <typename F>
__device__ __forceinline__ bool xsoftmax_finite(F x) { return x - x == (F)0; }

template <typename F>
__device__ __forceinline__ F xsoftmax_row_inf() { return (F)__int_as_float(0x7f800000); }

// A NaN on either side wins, so a NaN logit reaches l (and the loss).
template <typename F>
__device__ __forceinline__ F xsoftmax_nanmax(F a, F b) { return (a > b || a != a) ? a : b; }

// Lanes of one warp combine by xor shuffles (a butterfly: every lane ends with
// the whole group's value); a group wider than a warp then adds its warps'
// partials from shared memory, in warp order, so every thread of a group gets
// bit-identical results. `group` is uniform over the block, so every thread
// takes the same branches and meets the same barriers.
template <typename F, int K, bool MAX>
__device__ __forceinline__ void xsoftmax_group_reduce(F (&v)[K], int group, F* scratch) {
  const int width = group < 32 ? group : 32;
  for (int o = width / 2; o > 0; o >>= 1) {
    for (int j = 0; j < K; ++j) {
      const F other = __shfl_xor_sync(0xffffffffu, v[j], o);
      v[j] = MAX ? xsoftmax_nanmax(v[j], other) : v[j] + other;
    }
  }
  if (group > 32) {
    const int warp = threadIdx.x / 32, first = (threadIdx.x / group) * (group / 32);
    if (threadIdx.x % 32 == 0) {
      for (int j = 0; j < K; ++j) scratch[j * 32 + warp] = v[j];
    }
    __syncthreads();
    for (int j = 0; j < K; ++j) {
      F acc = scratch[j * 32 + first];
      for (int q = 1; q < group / 32; ++q) {
        const F x = scratch[j * 32 + first + q];
        acc = MAX ? xsoftmax_nanmax(acc, x) : acc + x;
      }
      v[j] = acc;
    }
    __syncthreads();  // the scratch is free again for the next reduction
  }
}

__device__ __forceinline__ float xsoftmax_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double xsoftmax_tanh(double x) { return tanh(x); }

// z = c tanh(s / c) under a softcap (CAP), else s itself (nothing computed).
template <bool CAP, typename F>
__device__ __forceinline__ F xsoftmax_row_z(F x, F cap) {
  if constexpr (CAP) {
    return cap * xsoftmax_tanh(x / cap);
  } else {
    return x;
  }
}

// The body of both row kernels. CAP: softcap; PROB: probability targets q (of type P, staged in
// shared memory after every row's scores, 16-byte aligned, and read from global memory once);
// zloss: the rows' c gets zc (m + l). Compile-time flags off compile to the plain kernel.
template <typename T, typename I, typename P, bool CAP, bool PROB>
__device__ __forceinline__ void xsoftmax_row_body(
    const T* s, long long s_row_stride, const I* y, const P* q, long long q_row_stride,
    long long n, long long c,
    const typename xsoftmax_compute<T>::type* coef_a,
    const typename xsoftmax_compute<T>::type* coef_c,
    const typename xsoftmax_compute<T>::type* coef_b,
    const typename xsoftmax_compute<T>::type* coef_zc,
    const typename xsoftmax_compute<T>::type* w, typename xsoftmax_compute<T>::type wsum,
    typename xsoftmax_compute<T>::type cap, typename xsoftmax_compute<T>::type qa,
    typename xsoftmax_compute<T>::type qb, int smooth, int zloss, int group,
    typename xsoftmax_compute<T>::type* l_out, typename xsoftmax_compute<T>::type* t_out,
    typename xsoftmax_compute<T>::type* u_out, typename xsoftmax_compute<T>::type* q_out,
    typename xsoftmax_compute<T>::type* m_out, T* d, long long d_row_stride) {
  typedef typename xsoftmax_compute<T>::type F;
  extern __shared__ __align__(16) unsigned char xsoftmax_smem[];
  F* scratch = (F*)xsoftmax_smem;
  const int rows = blockDim.x / group;
  const int r = threadIdx.x / group, lane = threadIdx.x % group;
  T* buf = (T*)(xsoftmax_smem + 3 * 32 * 8) + (long long)r * c;
  P* qbuf = nullptr;
  if constexpr (PROB) {
    const long long score_bytes = ((long long)rows * c * (long long)sizeof(T) + 15) / 16 * 16;
    qbuf = (P*)(xsoftmax_smem + 3 * 32 * 8 + score_bytes) + (long long)r * c;
  }
  for (long long base = (long long)blockIdx.x * rows; base < n;
       base += (long long)gridDim.x * rows) {
    const long long row = base + r;
    const bool active = row < n;

    F mx[1] = {-xsoftmax_row_inf<F>()};
    if (active) {
      const T* src = s + row * s_row_stride;
      for (long long k = lane; k < c; k += group) {
        const T x = src[k];
        buf[k] = x;
        if constexpr (PROB) qbuf[k] = q[row * q_row_stride + k];
        mx[0] = xsoftmax_nanmax(mx[0], xsoftmax_row_z<CAP>(xsoftmax_load(x), cap));
      }
    }
    xsoftmax_group_reduce<F, 1, true>(mx, group, scratch);
    const F m = xsoftmax_finite(mx[0]) ? mx[0] : (F)0;

    // A label is compared with k, never an index; probability rows have none.
    const I label = (active && !PROB) ? y[row] : (I)0;
    F acc[3] = {(F)0, (F)0, (F)0};  // sum of exp(z - m), t (uq' for probabilities), u (labels)
    F qsum[1] = {(F)0};             // probabilities: Q = sum w q
    if (active) {
      for (long long k = lane; k < c; k += group) {
        const F x = xsoftmax_row_z<CAP>(xsoftmax_load(buf[k]), cap) - m;
        acc[0] += xsoftmax_exp(x);
        if constexpr (PROB) {
          const F qk = xsoftmax_load(qbuf[k]);
          qsum[0] += w[k] * qk;
          acc[1] += w[k] * (qa * qk + qb) * x;  // uq' of q' = (1 - eps) q + eps / C (torch's order)
        } else {
          if (k == label) acc[1] = x;
          if (smooth) acc[2] += w[k] * x;
        }
      }
    }
    xsoftmax_group_reduce<F, 3, false>(acc, group, scratch);
    if constexpr (PROB) xsoftmax_group_reduce<F, 1, false>(qsum, group, scratch);
    const F l = mx[0] == xsoftmax_row_inf<F>() ? mx[0] : xsoftmax_log(acc[0]);

    if (active) {
      if (lane == 0) {
        l_out[row] = l;
        t_out[row] = acc[1];
        if (smooth && !PROB) u_out[row] = acc[2];
        if constexpr (PROB) q_out[row] = qsum[0];
        if (zloss) m_out[row] = m;
      }
      const F ca = coef_a[row], cb = smooth ? coef_b[row] : (F)0;
      F cc;
      if constexpr (PROB) {
        cc = ca * qsum[0];  // c = a Q + b W (probability_c)
        if (smooth) cc += cb * wsum;
      } else {
        cc = coef_c[row];
      }
      // z-loss: c + zc lse; an ignored row (zc = 0) keeps c, even where lse is not finite.
      if (zloss && coef_zc[row] != (F)0) cc += coef_zc[row] * (m + l);
      T* dst = d + row * d_row_stride;
      for (long long k = lane; k < c; k += group) {
        if constexpr (!CAP && !PROB) {  // the plain kernel's expression, unchanged
          F g = cc * xsoftmax_exp(xsoftmax_load(buf[k]) - m - l) - (k == label ? ca : (F)0);
          if (smooth) g -= cb * w[k];
          xsoftmax_store(dst + k, g);
        } else {
          F z = xsoftmax_load(buf[k]), th = (F)0;
          if constexpr (CAP) {
            th = xsoftmax_tanh(z / cap);
            z = cap * th;
          }
          F g = cc * xsoftmax_exp(z - m - l);
          if constexpr (PROB) {
            g -= ca * (w[k] * xsoftmax_load(qbuf[k]));
          } else {
            if (k == label) g -= ca;
          }
          if (smooth) g -= cb * w[k];
          if constexpr (CAP) g *= ((F)1 - th) * ((F)1 + th);
          xsoftmax_store(dst + k, g);
        }
      }
    }
    __syncthreads();  // every thread is done with buf before the next rows overwrite it
  }
}

template <typename T, typename I>
__global__ void xsoftmax_row_loss(
    const T* s, long long s_row_stride, const I* y, long long n, long long c,
    const typename xsoftmax_compute<T>::type* coef_a,
    const typename xsoftmax_compute<T>::type* coef_c,
    const typename xsoftmax_compute<T>::type* coef_b,
    const typename xsoftmax_compute<T>::type* w, int smooth, int group,
    typename xsoftmax_compute<T>::type* l_out, typename xsoftmax_compute<T>::type* t_out,
    typename xsoftmax_compute<T>::type* u_out, T* d, long long d_row_stride) {
  typedef typename xsoftmax_compute<T>::type F;
  xsoftmax_row_body<T, I, T, false, false>(
      s, s_row_stride, y, (const T*)nullptr, 0, n, c, coef_a, coef_c, coef_b, (const F*)nullptr, w,
      (F)0, (F)1, (F)1, (F)0, smooth, 0, group, l_out, t_out, u_out, (F*)nullptr, (F*)nullptr, d,
      d_row_stride);
}

// Every option: softcap (CAP), probability targets (PROB, q of type P), z-loss (zloss: coef_zc
// per row, m written to m_out for the loss's lse = m + l), with the plain kernel's arguments.
template <typename T, typename I, typename P, bool CAP, bool PROB>
__global__ void xsoftmax_row_loss_x(
    const T* s, long long s_row_stride, const I* y, const P* q, long long q_row_stride,
    long long n, long long c,
    const typename xsoftmax_compute<T>::type* coef_a,
    const typename xsoftmax_compute<T>::type* coef_c,
    const typename xsoftmax_compute<T>::type* coef_b,
    const typename xsoftmax_compute<T>::type* coef_zc,
    const typename xsoftmax_compute<T>::type* w, typename xsoftmax_compute<T>::type wsum,
    typename xsoftmax_compute<T>::type cap, typename xsoftmax_compute<T>::type qa,
    typename xsoftmax_compute<T>::type qb, int smooth, int zloss, int group,
    typename xsoftmax_compute<T>::type* l_out, typename xsoftmax_compute<T>::type* t_out,
    typename xsoftmax_compute<T>::type* u_out, typename xsoftmax_compute<T>::type* q_out,
    typename xsoftmax_compute<T>::type* m_out, T* d, long long d_row_stride) {
  xsoftmax_row_body<T, I, P, CAP, PROB>(
      s, s_row_stride, y, q, q_row_stride, n, c, coef_a, coef_c, coef_b, coef_zc, w, wsum, cap, qa,
      qb, smooth, zloss, group, l_out, t_out, u_out, q_out, m_out, d, d_row_stride);
}
"""

#: CuPy dtype names -> the C++ types of ``xsoftmax_row_loss<T, I>``.
ROW_SCORE_TYPES = {
    "float32": "float", "float64": "double", "float16": "__half", "bfloat16": "__nv_bfloat16",
}
ROW_LABEL_TYPES = {"int32": "int", "int64": "long long"}


def row_kernel_name(scores: str, labels: str) -> str:
    """The instantiation of the row kernel for these dtype names (``RawModule`` name expression)."""
    return f"xsoftmax_row_loss<{ROW_SCORE_TYPES[scores]}, {ROW_LABEL_TYPES[labels]}>"


def row_probability_types(scores: str) -> tuple[str, ...]:
    """dtype names probability targets may have in the row kernel: the scores' own or the compute type."""
    return (scores,) if scores in ("float32", "float64") else (scores, "float32")


def row_kernel_x_name(scores: str, labels: str | None, probs: str | None, cap: bool) -> str:
    """The instantiation of ``xsoftmax_row_loss_x`` for labels (``probs`` None) or probabilities
    (``labels`` None; the label type is then ``int``, never read)."""
    T = ROW_SCORE_TYPES[scores]
    I_ = ROW_LABEL_TYPES[labels or "int32"]
    P = T if probs is None else ROW_SCORE_TYPES[probs]
    flags = f"{'true' if cap else 'false'}, {'false' if probs is None else 'true'}"
    return f"xsoftmax_row_loss_x<{T}, {I_}, {P}, {flags}>"


#: Every instantiation the engine may launch: the plain kernel, then every option's.
ROW_KERNEL_NAMES = (
    *(row_kernel_name(s, i) for s in ROW_SCORE_TYPES for i in ROW_LABEL_TYPES),
    *(row_kernel_x_name(s, i, None, cap) for s in ROW_SCORE_TYPES for i in ROW_LABEL_TYPES
      for cap in (False, True)),
    *(row_kernel_x_name(s, None, p, cap) for s in ROW_SCORE_TYPES for p in row_probability_types(s)
      for cap in (False, True)),
)
