"""Row kernels of the NumPy engine: row sums, column folds, the float16 store.

Each works on a C-contiguous ``(n, C)`` block and gives every row bits that
depend on that row alone, whatever ``n`` (the engine's determinism rests on it).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["STORE_CHUNK", "column_fold", "row_sum", "same_view", "store", "to_float16", "ufunc_bufsize"]

#: float32 values per chunk of the float16 store (:func:`store`): 9 bytes of temporaries each.
STORE_CHUNK = 8192
#: The smallest normal float16, 2^-14.
HALF_MIN_NORMAL = np.float32(2.0**-14)


def store(z: np.ndarray, dst: np.ndarray) -> None:
    """``dst[...] = z``, cast to ``dst``'s dtype as NumPy casts (round to nearest even).

    float32 -> float16 is done in chunks by :func:`to_float16`: most
    gradient entries are float16 subnormals (below 6.1e-5), whose conversion
    by the CPU takes a slow microcode assist (docs/backends.md).
    """
    if not (z.dtype == np.float32 and dst.dtype == np.float16 and dst.flags.c_contiguous):
        np.copyto(dst, z, casting="unsafe")
        return
    zs, ds = z.reshape(-1), dst.reshape(-1)
    for i in range(0, zs.size, STORE_CHUNK):
        to_float16(zs[i : i + STORE_CHUNK], ds[i : i + STORE_CHUNK])


def to_float16(x: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = x.astype(float16)`` (1-D float32), bit for bit, without subnormal conversions.

    Where ``|x| < 2^-14`` the float16 bits are ``round(|x| / 2^-24)``: the bits
    of ``|x| + 0.5`` (ulp 2^-24, rounded to nearest even) minus those of 0.5,
    plus the sign bit. Checked against ``astype`` on all 2^32 float32 values.
    """
    a = np.abs(x)
    small = a < HALF_MIN_NORMAL
    if not small.any():
        np.copyto(out, x, casting="unsafe")
        return
    np.add(a, np.float32(0.5), out=a)
    bits = a.view(np.uint32)
    bits -= np.uint32(0x3F000000)  # the bits of 0.5
    bits |= (x.view(np.uint32) >> 16) & np.uint32(0x8000)
    np.copyto(out, x, casting="unsafe", where=~small)
    np.copyto(out.view(np.uint16), bits, casting="unsafe", where=small)


def column_fold(op: np.ufunc, a: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out_i = (((a_i0 op a_i1) op a_i2) … )``, column by column (short rows)."""
    np.copyto(out, a[:, 0])
    for k in range(1, a.shape[1]):
        op(out, a[:, k], out=out)
    return out


def row_sum(a: np.ndarray, out: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """``out_i = Σ_k a_ik`` (``Σ_k a_ik w_k`` with ``w``) for a C-contiguous ``(n, C)`` block.

    ``np.einsum``: vectorised, faster than ``np.add.reduce`` along rows, and
    one kernel per whole row, so a row's sum depends on that row alone. A
    lone row goes as two stride-0 copies: a 1-D operand takes another kernel.
    """
    spec, operands = ("ij->i", ()) if w is None else ("ij,j->i", (w,))
    if a.shape[0] == 1:
        pair = as_strided(a[0], shape=(2, a.shape[1]), strides=(0, a.strides[1]), writeable=False)
        out[0] = np.einsum(spec, pair, *operands)[0]
        return out
    return np.einsum(spec, a, *operands, out=out)


def ufunc_bufsize(c: int) -> int | None:
    """The ufunc buffer (a multiple of 16) for ``(n, C)`` blocks, or None for NumPy's 8192.

    At most one row: ``z * v[:, None]`` then runs the stride-0 loop instead
    of copying the broadcast ``v`` row after row into the buffer.
    """
    return c // 16 * 16 if 192 <= c < 8192 else None


def same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """Same memory, element for element (``out=scores``)."""
    if a is b:
        return True
    if not np.may_share_memory(a, b):  # a bounds check: no dict built for a new output
        return False
    data = a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    return data and a.strides == b.strides and a.shape == b.shape
