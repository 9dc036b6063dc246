r"""Numerical gradients by centered differences, on any backend.

``∂f/∂x_i ≈ (f(x + h e_i) − f(x − h e_i)) / 2h`` has error ``O(h²)``; with
``h = 1e-5`` in float64 that is about 1e-10, far below the 1e-7 relative
errors a correct analytic gradient reaches. The input is copied to float64
when the backend has it (JAX only with ``jax_enable_x64``), never modified,
and perturbed out of place, so immutable arrays (JAX) work too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._backend import array_namespace, device, to_numpy
from ._typing import Array
from ._validate import check_floating

__all__ = ["numerical_gradient", "numerical_gradient_array", "rel_error"]


def _float64(x: Array) -> tuple[Any, Array, Any]:
    """``(xp, x in float64 where the backend has it, x's device)``."""
    xp = array_namespace(x, names=("x",))
    check_floating(xp, x, "x")
    try:
        x64 = xp.astype(x, xp.float64)
    except Exception:  # a backend/device without float64 (e.g. JAX without x64)
        x64 = x
    if x64.dtype != xp.float64:
        x64 = x  # jax silently keeps float32 without x64
    return xp, x64, device(x)


def _basis(xp: Any, x: Array, i: int, h: float, dev: Any) -> Array:
    flat = xp.astype(xp.arange(_size(x), device=dev) == i, x.dtype) * h
    return xp.reshape(flat, x.shape)


def _size(x: Array) -> int:
    return int(np.prod(x.shape))


def numerical_gradient(f: Callable[[Array], Any], x: Array, *, h: float = 1e-5) -> Array:
    """Gradient of a scalar function ``f`` at ``x``, same shape and namespace as ``x``."""
    return numerical_gradient_array(f, x, None, h=h)


def numerical_gradient_array(
    f: Callable[[Array], Any], x: Array, dout: Array | None, *, h: float = 1e-5
) -> Array:
    """``Σ_j dout_j ∂f(x)_j/∂x_i`` for an array-valued ``f`` (a vector-Jacobian product).

    With ``dout=None``, ``f`` must return a scalar and this is its gradient.
    """
    xp, x64, dev = _float64(x)
    d = None if dout is None else to_numpy(dout).astype(np.float64)
    grad = np.zeros(_size(x64), dtype=np.float64)
    for i in range(grad.size):
        step = _basis(xp, x64, i, h, dev)
        plus = to_numpy(f(x64 + step)).astype(np.float64)
        minus = to_numpy(f(x64 - step)).astype(np.float64)
        if i == 0:
            _check_output_shape(plus.shape, d)
        diff = (plus - minus) / (2.0 * h)
        grad[i] = float(np.sum(diff * d)) if d is not None else float(diff)
    return xp.asarray(grad.reshape(tuple(x.shape)), dtype=x64.dtype, device=dev)


def _check_output_shape(shape: tuple[int, ...], dout: np.ndarray | None) -> None:
    """``f(x)`` must be a scalar (no ``dout``) or have ``dout``'s shape; no broadcasting."""
    if dout is None and shape != ():
        raise ValueError(
            f"f(x) must return a scalar for numerical_gradient, got shape {shape}; "
            f"use numerical_gradient_array(f, x, dout) for array-valued f"
        )
    if dout is not None and shape != dout.shape:
        raise ValueError(f"dout must have the shape of f(x) {shape}, got shape {dout.shape}")


def rel_error(a: Any, b: Any) -> float:
    """``max |a − b| / max(1e-8, |a| + |b|)``, elementwise, on any two arrays."""
    a64 = to_numpy(a).astype(np.float64)
    b64 = to_numpy(b).astype(np.float64)
    if a64.shape != b64.shape:
        raise ValueError(f"a and b must have the same shape, got {a64.shape} and {b64.shape}")
    if a64.size == 0:
        return 0.0
    return float(np.max(np.abs(a64 - b64) / np.maximum(1e-8, np.abs(a64) + np.abs(b64))))
