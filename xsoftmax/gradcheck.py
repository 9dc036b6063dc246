r"""Numerical gradients by centered differences, on any backend.

``∂f/∂x_i ≈ (f(x⁺) − f(x⁻)) / (x⁺_i − x⁻_i)`` with ``x^± = x ± h e_i`` has
error ``O(h²)``; with ``h = 1e-5`` in float64 that is about 1e-10, far below
the 1e-7 relative errors a correct analytic gradient reaches. The
denominator is the difference of the values actually stored (``x ± h``
rounded to ``x``'s dtype), so a float32 ``x`` is differenced exactly too.

CS231n's idiom works: ``numerical_gradient(lambda _: model.loss(X, y)[0],
model.params["W1"])``. The lambda ignores its argument and reads the
parameter itself, so ``x`` is perturbed **in place** where the backend
allows it (NumPy, CuPy, torch) and restored bit for bit afterwards (also
when ``f`` raises). ``f`` is called with ``x`` itself when ``x`` is float64,
else with a float64 copy carrying the same perturbation, so a function of
its argument is evaluated in float64.

JAX, Dask and array-api-strict arrays cannot be written in place: ``f``
gets a perturbed float64 copy, and a :class:`NotInPlaceWarning` says that
``f`` must compute from its argument. A gradient that comes out identically
zero while ``f`` returned nonzero values raises a
:class:`ZeroGradientWarning` naming the likely cause.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ._backend import array_namespace, backend_name, device, to_numpy
from ._typing import Array
from ._validate import check_floating

__all__ = [
    "NotInPlaceWarning",
    "ZeroGradientWarning",
    "numerical_gradient",
    "numerical_gradient_array",
    "rel_error",
]

#: Backends whose arrays can be written element by element.
IN_PLACE_BACKENDS = ("numpy", "cupy", "torch")


class NotInPlaceWarning(UserWarning):
    """``x`` cannot be perturbed in place, so ``f`` must compute from its argument."""


class ZeroGradientWarning(UserWarning):
    """The numerical gradient is identically zero although ``f`` is not zero."""


def _float64(xp: Any, x: Array) -> Array:
    """A float64 copy of ``x`` where the backend has float64, else ``x`` (JAX without x64)."""
    try:
        x64 = xp.astype(x, xp.float64)
    except Exception:  # a backend/device without float64
        return x
    return x64 if x64.dtype == xp.float64 else x  # jax silently keeps float32 without x64


def _size(x: Array) -> int:
    return int(np.prod(x.shape))


def _writable(x: Array, name: str) -> Any:
    """The object to write ``x``'s elements through, or ``None`` when ``x`` is immutable."""
    if name not in IN_PLACE_BACKENDS:
        return None
    if name == "torch":
        return x.detach()  # same storage; writing it is allowed on a leaf that requires grad
    flags = getattr(x, "flags", None)
    if flags is not None and not getattr(flags, "writeable", True):
        return None
    return x


def _store(target: Any, index: tuple[int, ...], value: float) -> float:
    """Write ``value`` into ``target[index]``; the value actually stored (rounded to its dtype)."""
    target[index] = value
    return float(to_numpy(target[index]))


def numerical_gradient(
    f: Callable[[Array], Any], x: Array, *, h: float = 1e-5, verbose: bool = False
) -> Array:
    """Gradient of a scalar function ``f`` at ``x``, same shape and namespace as ``x`` (float64).

    CS231n's ``eval_numerical_gradient(f, x, verbose=True, h=1e-5)``; with
    ``verbose`` each entry is printed as it is found (``(i, j) value``).
    """
    grad = numerical_gradient_array(f, x, None, h=h)
    if verbose:
        host = to_numpy(grad)
        for index in np.ndindex(host.shape):
            print(index, host[index])
    return grad


def numerical_gradient_array(
    f: Callable[[Array], Any], x: Array, dout: Array | None, *, h: float = 1e-5
) -> Array:
    """``Σ_j dout_j ∂f(x)_j/∂x_i`` for an array-valued ``f`` (a vector-Jacobian product).

    With ``dout=None``, ``f`` must return a scalar and this is its gradient.
    ``x`` is perturbed in place where its backend allows it and restored
    exactly; see the module docstring.
    """
    xp = array_namespace(x, names=("x",))
    check_floating(xp, x, "x")
    if not h > 0:
        raise ValueError(f"h must be > 0, got {h!r}")
    name = backend_name(xp)
    d = None if dout is None else to_numpy(dout).astype(np.float64)
    target = _writable(x, name)
    if target is None:
        what = f"{name} arrays cannot" if name not in IN_PLACE_BACKENDS else "x is read-only and cannot"
        warnings.warn(
            f"numerical_gradient: {what} be changed in place, so f gets perturbed "
            f"copies of x and must compute from its argument; a function that ignores it (CS231n's "
            f"`lambda _: model.loss(X, y)[0]`) gives a zero gradient. Write "
            f"`lambda w: loss_with(w)` instead",
            NotInPlaceWarning,
            stacklevel=3 if dout is None else 2,
        )
        grad, outputs = _out_of_place(f, xp, x, d, h)
        cause = (
            f"{what} be changed in place, so f must compute from its argument "
            f"rather than read the parameter itself"
        )
    else:
        grad, outputs = _in_place(f, xp, x, target, d, h)
        cause = (
            "f does not read x: it may use a copy of it (the parameter replaced by a new array, "
            "or x made by xs.asarray / astype) instead of the array passed here"
        )
    if grad.size and not np.any(grad) and outputs:
        warnings.warn(
            f"numerical_gradient: the gradient is identically zero although f(x) is not zero; "
            f"likely cause: {cause}",
            ZeroGradientWarning,
            stacklevel=3 if dout is None else 2,
        )
    x64 = _float64(xp, x)
    return xp.asarray(grad.reshape(tuple(x.shape)), dtype=x64.dtype, device=device(x))


def _difference(plus: Any, minus: Any, d: np.ndarray | None, first: bool) -> tuple[float, bool]:
    """``(Σ dout·(f⁺ − f⁻), whether f⁺ or f⁻ has a nonzero entry)``, checking f's shape once."""
    p = to_numpy(plus).astype(np.float64)
    m = to_numpy(minus).astype(np.float64)
    if first:
        _check_output_shape(p.shape, d)
    diff = p - m
    total = float(np.sum(diff * d)) if d is not None else float(diff)
    return total, bool(np.any(p) or np.any(m))


def _in_place(
    f: Callable[[Array], Any], xp: Any, x: Array, target: Any, d: np.ndarray | None, h: float
) -> tuple[np.ndarray, bool]:
    """Perturb ``x`` element by element in place; ``f`` gets ``x`` or a float64 twin."""
    host = to_numpy(x).astype(np.float64)  # exact: every float dtype is a subset of float64
    x64 = x if x.dtype == xp.float64 else _float64(xp, x)
    twin = None if x64 is x else _writable(x64, backend_name(xp))
    arg = x if twin is None else x64
    grad = np.zeros(host.size, dtype=np.float64)
    nonzero = False
    for i in range(host.size):
        index = tuple(int(k) for k in np.unravel_index(i, host.shape))
        old = float(host[index])
        try:
            step = h
            while True:  # h below half an ulp of x_i would store x_i itself: widen it
                up = _store(target, index, old + step)
                down = _store(target, index, old - step)
                if up != down or step > 1e300:
                    break
                step *= 2.0
            target[index] = up
            if twin is not None:
                twin[index] = up
            plus = f(arg)
            target[index] = down
            if twin is not None:
                twin[index] = down
            minus = f(arg)
        finally:
            target[index] = old
            if twin is not None:
                twin[index] = old
        total, seen = _difference(plus, minus, d, i == 0)
        grad[i] = total / (up - down)
        nonzero = nonzero or seen
    return grad, nonzero


def _out_of_place(
    f: Callable[[Array], Any], xp: Any, x: Array, d: np.ndarray | None, h: float
) -> tuple[np.ndarray, bool]:
    """``f(x64 ± h e_i)`` on fresh arrays: for backends whose arrays are immutable."""
    x64 = _float64(xp, x)
    dev = device(x)
    n = _size(x64)
    grad = np.zeros(n, dtype=np.float64)
    nonzero = False
    for i in range(n):
        basis = xp.reshape(xp.astype(xp.arange(n, device=dev) == i, x64.dtype) * h, x64.shape)
        total, seen = _difference(f(x64 + basis), f(x64 - basis), d, i == 0)
        grad[i] = total / (2.0 * h)
        nonzero = nonzero or seen
    return grad, nonzero


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
