r"""Affine and ReLU layers: ``*_forward -> (out, cache)``, ``*_backward(dout, cache)``.

The CS231n contract, written against the Array API so it runs on every
backend. Each backward rule sits next to its forward and states the
derivative it implements.
"""

from __future__ import annotations

import math
from typing import Any

from ._backend import array_namespace, scalar_like
from ._typing import Array, ArrayNamespace
from ._validate import check_floating, check_same_device

__all__ = [
    "affine_backward",
    "affine_forward",
    "affine_relu_backward",
    "affine_relu_forward",
    "relu_backward",
    "relu_forward",
]


def _check_cache(cache: Any, size: int, name: str) -> tuple[Any, ...]:
    if not isinstance(cache, tuple) or len(cache) != size:
        raise TypeError(f"cache must be the tuple returned by {name}, got {type(cache).__name__}")
    return cache


def _check_dout(dout: Any, shape: tuple[int, ...], xp: ArrayNamespace) -> None:
    array_namespace(dout, names=("dout",))
    check_floating(xp, dout, "dout")
    if tuple(dout.shape) != tuple(shape):
        raise ValueError(f"dout must have the forward output's shape {tuple(shape)}, got {tuple(dout.shape)}")


def affine_forward(x: Array, w: Array, b: Array) -> tuple[Array, tuple[Array, Array, Array]]:
    r"""``out = x̃ w + b`` with ``x̃ = x.reshape(N, D)``.

    Inputs:

    - ``x``: ``(N, d_1, ..., d_k)`` with ``D = d_1 ⋯ d_k``
    - ``w``: ``(D, M)``
    - ``b``: ``(M,)``

    Returns ``out`` of shape ``(N, M)`` and ``cache = (x, w, b)``.
    """
    xp = array_namespace(x, w, b, names=("x", "w", "b"))
    check_same_device(xp, ("x", "w", "b"), x, w, b)
    for name, arr in (("x", x), ("w", w), ("b", b)):
        check_floating(xp, arr, name)
    if x.ndim < 1:
        raise ValueError("x must have shape (N, d1, ..., dk), got a 0-d array")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D with shape (D, M), got shape {tuple(w.shape)}")
    d = math.prod(x.shape[1:])
    if w.shape[0] != d:
        raise ValueError(
            f"w must have shape (D, M) with D = {d} (x has shape {tuple(x.shape)}), "
            f"got shape {tuple(w.shape)}"
        )
    if b.ndim != 1 or b.shape[0] != w.shape[1]:
        raise ValueError(f"b must have shape (M,) = ({w.shape[1]},), got shape {tuple(b.shape)}")
    # xp.matmul, not @: torch's operator refuses float32 @ float64 where
    # the standard (and array-api-compat's torch.matmul) promotes.
    out = xp.matmul(xp.reshape(x, (x.shape[0], d)), w) + b
    return out, (x, w, b)


def affine_backward(dout: Array, cache: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
    r"""Backward of :func:`affine_forward`.

    From ``out_{nm} = Σ_d x̃_{nd} w_{dm} + b_m``:

    - ``dx̃ = dout · wᵀ`` (reshaped to ``x``'s shape),
    - ``dw = x̃ᵀ · dout`` (each weight collects every row's contribution),
    - ``db = Σ_n dout_n`` (the bias is broadcast over rows, so its gradient
      sums over them).
    """
    x, w, b = _check_cache(cache, 3, "affine_forward")
    xp = array_namespace(x, w, b, dout, names=("x", "w", "b", "dout"))
    check_same_device(xp, ("cache x", "dout"), x, dout)
    _check_dout(dout, (x.shape[0], w.shape[1]), xp)
    x2 = xp.reshape(x, (x.shape[0], w.shape[0]))
    dx = xp.reshape(xp.matmul(dout, xp.matrix_transpose(w)), x.shape)
    dw = xp.matmul(xp.matrix_transpose(x2), dout)
    db = xp.sum(dout, axis=0)
    return dx, dw, db


def relu_forward(x: Array) -> tuple[Array, Array]:
    r"""``out = max(x, 0)``; ``cache = x``."""
    xp = array_namespace(x, names=("x",))
    check_floating(xp, x, "x")
    return xp.where(x > 0, x, scalar_like(xp, 0, x)), x


def relu_backward(dout: Array, cache: Array) -> Array:
    r"""``dx = dout · 1[x > 0]``: the gradient passes where the unit was active.

    At ``x = 0`` the subgradient 0 is used, as in PyTorch.
    """
    x = cache
    xp = array_namespace(x, dout, names=("cache", "dout"))
    check_same_device(xp, ("cache", "dout"), x, dout)
    _check_dout(dout, tuple(x.shape), xp)
    return xp.where(x > 0, dout, scalar_like(xp, 0, dout))


def affine_relu_forward(x: Array, w: Array, b: Array) -> tuple[Array, tuple[Any, Any]]:
    """``relu(affine(x, w, b))``; ``cache = (affine cache, relu cache)``."""
    a, fc_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(a)
    return out, (fc_cache, relu_cache)


def affine_relu_backward(dout: Array, cache: tuple[Any, Any]) -> tuple[Array, Array, Array]:
    """Chain rule through :func:`relu_backward` then :func:`affine_backward`."""
    fc_cache, relu_cache = _check_cache(cache, 2, "affine_relu_forward")
    return affine_backward(relu_backward(dout, relu_cache), fc_cache)
