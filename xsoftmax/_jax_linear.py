r"""JAX adapter of the fused linear + softmax loss (re-exported by ``xsoftmax.jax``).

``linear_cross_entropy(x, w, labels, b=None, ...)`` is the softmax
cross-entropy of the logits ``x wᵀ + b`` with ``w`` of shape ``(C, D)``, as
``torch.nn.Linear`` and the torch adapter store it (``flax.linen.Dense``
keeps the transpose, ``(D, C)``: pass ``kernel.T``). The ``(N, C)`` logits
exist one row chunk at a time (:mod:`xsoftmax._linear`) and the function is
a :func:`jax.custom_vjp`, safe under ``jit``, ``grad`` and ``value_and_grad``:

* "mean" and "sum": the forward pass computes the loss and the gradients
  of ``x``, ``w`` and ``b`` (its residuals); the backward pass scales them
  by the cotangent.
* "none": the forward pass keeps the row log-sum-exp; the backward pass
  recomputes each chunk's logits and forms ``γ_i ∂loss_i/∂s_i`` from it.

Labels are range-checked when concrete; under ``jit`` a bad label makes its
row's loss and gradient NaN, as in :func:`xsoftmax.softmax_loss`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from ._linear import check_linear_inputs, linear_lse_forward, linear_none_backward, linear_softmax_loss
from ._typing import Array

__all__ = ["linear_cross_entropy"]


def _options(opts: tuple[Any, ...], weight: Any) -> dict[str, Any]:
    reduction, ignore_index, label_smoothing, chunk_rows, z_loss, softcap = opts
    return dict(
        reduction=reduction, weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, chunk_rows=chunk_rows, z_loss=z_loss, softcap=softcap,
    )  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _loss(x: Array, w: Array, b: Array | None, labels: Array, weight: Array | None, opts: tuple) -> Array:
    return _fwd(x, w, b, labels, weight, opts)[0]


def _fwd(x: Array, w: Array, b: Array | None, labels: Array, weight: Array | None, opts: tuple) -> Any:
    kw = _options(opts, weight)
    if opts[0] != "none":
        loss, dx, dw, db = linear_softmax_loss(x, w.T, b, labels, **kw)
        return loss, (dx, dw.T, db)
    p = check_linear_inputs(x, w.T, b, labels, **kw)
    rows, lse = linear_lse_forward(p)
    return rows.astype(p.dtype), (x, w, b, labels, weight, lse)


def _bwd(opts: tuple, res: Any, g: Array) -> tuple[Any, ...]:
    if opts[0] != "none":
        dx, dw, db = res
        return g * dx, g * dw, None if db is None else g * db, None, None
    x, w, b, labels, weight, lse = res
    p = check_linear_inputs(x, w.T, b, labels, **_options(opts, weight))
    dx, dw, db = linear_none_backward(p, lse, g)
    cast = lambda a, like: None if a is None else a.astype(like.dtype)  # noqa: E731
    return cast(dx, x), cast(dw.T, w), cast(db, b), None, None


_loss.defvjp(_fwd, _bwd)


def linear_cross_entropy(
    x: Array,
    w: Array,
    labels: Array,
    b: Array | None = None,
    *,
    reduction: str = "mean",
    weight: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_rows: int | None = None,
) -> Array:
    r"""Softmax cross-entropy of ``x wᵀ + b`` against integer ``labels``, in row chunks.

    ``x`` ``(…, D)``, ``w`` ``(C, D)`` (``nn.Linear`` layout), ``labels``
    ``(…)``, ``b`` ``(C,)`` or None; ``reduction``, ``weight``,
    ``ignore_index``, ``label_smoothing``, ``z_loss`` and ``softcap`` as in
    :func:`xsoftmax.softmax_loss`; ``chunk_rows`` as in
    :func:`xsoftmax.linear_softmax_loss`. Returns a 0-d loss or the ``(…)``
    row losses ("none"); differentiable in ``x``, ``w`` and ``b``.
    """
    if x.ndim < 1 or labels.shape != x.shape[:-1]:
        raise ValueError(
            f"labels must have x's shape without its last axis: x has shape {tuple(x.shape)}, "
            f"labels has shape {tuple(labels.shape)}"
        )
    if w.ndim != 2 or w.shape[1] != x.shape[-1]:
        raise ValueError(
            f"x (..., D) and w (C, D) do not chain: x has shape {tuple(x.shape)}, w has shape "
            f"{tuple(w.shape)} (expected (C, {x.shape[-1]}))"
        )
    opts = (reduction, ignore_index, label_smoothing, chunk_rows, z_loss, softcap)
    loss = _loss(x.reshape(-1, x.shape[-1]), w, b, labels.reshape(-1), weight, opts)
    return loss.reshape(labels.shape) if reduction == "none" else loss
