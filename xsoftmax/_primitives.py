"""The stable primitives ``logsumexp``, ``softmax`` and ``log_softmax``: check, then compute.

Each validates its argument and runs a few array calls of the generic code
(:func:`xsoftmax._engines.reference.shifted`: the row max, reset to 0 where it
is not finite, so that a row of ``−inf`` gives ``exp(−inf) = 0``, not NaN).
The stability argument is in :mod:`xsoftmax._engines.reference`.
"""

from __future__ import annotations

from typing import Any

from ._backend import array_namespace
from ._dtypes import narrow, widen
from ._engines.reference import shifted
from ._typing import Array, ArrayNamespace
from ._validate import check_floating

__all__ = ["log_softmax", "logsumexp", "softmax"]


def _primitive_input(x: Any, axis: Any, name: str = "x") -> tuple[ArrayNamespace, Array, int]:
    xp = array_namespace(x, names=(name,))
    check_floating(xp, x, name)
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for {name} with shape {tuple(x.shape)}")
    if x.shape[axis] == 0:
        raise ValueError(f"{name} has no elements along axis {axis}: shape {tuple(x.shape)}")
    return xp, x, axis


def logsumexp(x: Array, /, *, axis: int = -1, keepdims: bool = False) -> Array:
    r"""``log Σ_k exp(x_k)`` along ``axis``, stable for any finite or ``−inf`` input.

    Computed as ``m + log Σ exp(x − m)`` with ``m = max(x)``. A slice of all
    ``−inf`` gives ``−inf``; float16 is computed in float32.
    """
    xp, x, axis = _primitive_input(x, axis)
    z, m = shifted(xp, widen(xp, x), axis)
    out = m + xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))
    if not keepdims:
        out = xp.squeeze(out, axis=axis)
    return narrow(xp, out, x.dtype)


def softmax(x: Array, /, *, axis: int = -1) -> Array:
    r"""``p_k = exp(x_k − m) / Σ_j exp(x_j − m)`` along ``axis`` (``m`` the max)."""
    xp, x, axis = _primitive_input(x, axis)
    z, _ = shifted(xp, widen(xp, x), axis)
    e = xp.exp(z)
    p = e / xp.sum(e, axis=axis, keepdims=True)
    return narrow(xp, p, x.dtype)


def log_softmax(x: Array, /, *, axis: int = -1) -> Array:
    r"""``log p_k = (x_k − m) − log Σ_j exp(x_j − m)``: never ``log(softmax(x))``."""
    xp, x, axis = _primitive_input(x, axis)
    z, _ = shifted(xp, widen(xp, x), axis)
    out = z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))
    return narrow(xp, out, x.dtype)
