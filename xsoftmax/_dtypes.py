"""Which dtype the arithmetic runs in.

Half-precision inputs (float16, bfloat16) are widened to float32 for the
reductions and the exponentials, then the results are cast back to the
input dtype: float16 has 10 mantissa bits and overflows at 65504, so a
float16 log-sum-exp over thousands of classes would lose the loss entirely.
"""

from __future__ import annotations

from ._typing import ArrayNamespace, DType

__all__ = ["compute_dtype"]


def compute_dtype(xp: ArrayNamespace, dtype: DType) -> DType:
    """float32 for 16-bit floating dtypes, ``dtype`` itself otherwise."""
    if xp.isdtype(dtype, "real floating") and xp.finfo(dtype).bits < 32:
        return xp.float32
    return dtype
