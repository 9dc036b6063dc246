"""Which dtype the arithmetic runs in.

Half-precision inputs (float16, bfloat16) are widened to float32 for the
reductions and the exponentials, then the results are cast back to the
input dtype: float16 has 10 mantissa bits and overflows at 65504, so a
float16 log-sum-exp over thousands of classes would lose the loss entirely.
"""

from __future__ import annotations

from ._typing import Array, ArrayNamespace, DType

__all__ = ["compute_dtype", "narrow", "widen"]


def compute_dtype(xp: ArrayNamespace, dtype: DType) -> DType:
    """float32 for 16-bit floating dtypes, ``dtype`` itself otherwise."""
    if xp.isdtype(dtype, "real floating") and xp.finfo(dtype).bits < 32:
        return xp.float32
    return dtype


def widen(xp: ArrayNamespace, x: Array) -> Array:
    """``x`` in its compute dtype (itself, not a copy, when that is its dtype)."""
    cdt = compute_dtype(xp, x.dtype)
    return x if cdt == x.dtype else xp.astype(x, cdt)


def narrow(xp: ArrayNamespace, x: Array, dtype: DType) -> Array:
    """``x`` cast back to ``dtype`` (the input's), itself when it already has it."""
    return x if x.dtype == dtype else xp.astype(x, dtype)

