r"""JAX adapter: ``cross_entropy`` as a ``jax.custom_vjp`` whose forward pass keeps the gradient.

::

    from xsoftmax.jax import cross_entropy
    loss, g = jax.jit(jax.value_and_grad(cross_entropy))(logits, labels)

``cross_entropy(logits, labels, *, reduction="mean", weight=None,
ignore_index=None, label_smoothing=0.0, z_loss=0.0, softcap=None)`` is
``xs.softmax_loss``'s loss (optax's ``softmax_cross_entropy_with_integer_labels``
plus torch's options; ``ignore_index`` in xsoftmax's sense: None ignores
nothing), for labels or class probabilities and K-dimensional logits
``(N, C, d1, …, dk)``. The forward pass computes the loss and

.. math::  G_{ik} = ∂\text{loss}/∂s_{ik} = [(c_i + zc_i\, lse_i) p_{ik} − a_i T_{ik} − b_i w_k]\, g_{ik}

together in ``jax.numpy`` (:func:`_loss_and_grad`) and keeps ``G`` as the
residual; the backward pass is ``g · G`` (row ``i`` scaled
by ``g_i`` for ``reduction="none"``), which XLA fuses into the pass that
writes ``G``. Works under ``jit``, ``grad``, ``value_and_grad`` and ``vmap``.
``weight`` and the integer ``labels`` get zero cotangents (as in torch, the
class weights are not differentiated).

Why ``jax.numpy`` and not a callback to the NumPy engine: ``jax.pure_callback``
copies the operands and the result across the host boundary and keeps XLA
from fusing the backward scaling; measured on a 2-core CPU at 4096 x 32000
float32 it was slower than JAX's own ``jit(value_and_grad)``, while this
version is faster (``bench/adapters.py``, numbers in ``docs/adapters.md``).

Labels under a trace cannot raise: a row with a label outside ``[0, C)``
(other than ``ignore_index``) gets a NaN loss and NaN gradient; called eagerly
on concrete arrays, it raises ``ValueError`` like the rest of the library.
"""

from __future__ import annotations

from functools import partial
from typing import Any, cast

import jax
import jax.numpy as jnp

from ._dispatch import dispatch_softmax_loss
from ._jax_linear import linear_cross_entropy
from ._typing import Reduction

__all__ = ["cross_entropy", "linear_cross_entropy"]


def _loss_and_grad(
    logits: Any,
    labels: Any,
    weight: Any,
    reduction: str,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[Any, Any]:
    """``(loss, G)`` of logits ``(N, C)``, ``(N, C, d1, …, dk)`` or ``(C,)``: the reference engine.

    Checked and run as ``softmax_loss(..., engine="reference")`` is, in
    ``jax.numpy``, which XLA fuses into a few passes over the logits.
    """
    return dispatch_softmax_loss(
        logits, labels, reduction=cast(Reduction, reduction), weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, engine="reference",
    )  # fmt: skip


_STATIC = (3, 4, 5, 6, 7)  # reduction, ignore_index, label_smoothing, z_loss, softcap


@partial(jax.custom_vjp, nondiff_argnums=_STATIC)
def _cross_entropy(
    logits: Any, labels: Any, weight: Any, reduction: str, ignore_index: int | None, label_smoothing: float,
    z_loss: float, softcap: float | None,
) -> Any:  # fmt: skip
    options = (reduction, ignore_index, label_smoothing, z_loss, softcap)
    return _loss_and_grad(logits, labels, weight, *options)[0]


def _fwd(
    logits: Any, labels: Any, weight: Any, reduction: str, ignore_index: int | None, label_smoothing: float,
    z_loss: float, softcap: float | None,
) -> tuple[Any, Any]:  # fmt: skip
    options = (reduction, ignore_index, label_smoothing, z_loss, softcap)
    loss, d = _loss_and_grad(logits, labels, weight, *options)
    return loss, (d, weight)


def _bwd(
    reduction: str, ignore_index: int | None, label_smoothing: float, z_loss: float, softcap: float | None,
    res: Any, g: Any,
) -> tuple[Any, None, Any]:  # fmt: skip
    d, weight = res
    if reduction == "none" and d.ndim > 1:
        g = jnp.expand_dims(g, 1)  # (N, d1, …) against G's (N, C, d1, …): broadcast over the classes
    grad = d * g.astype(d.dtype)
    zero_weight = None if weight is None else jnp.zeros_like(weight)
    return grad, None, zero_weight


_cross_entropy.defvjp(_fwd, _bwd)


def cross_entropy(
    logits: Any,
    labels: Any,
    *,
    reduction: str = "mean",
    weight: Any = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Any:
    """Softmax cross-entropy of ``logits`` and ``labels``, differentiable in ``logits``.

    ``logits`` ``(N, C)`` or ``(N, C, d1, …, dk)`` (class axis 1) or ``(C,)``;
    ``labels`` integer class indices of the logits' shape without axis 1, or
    floating class probabilities of the logits' shape (need not sum to 1;
    they get a zero cotangent, as the class weights do). Options as in
    ``xs.softmax_loss``, ``z_loss`` and ``softcap`` included. Returns the
    loss: 0-d for "mean" / "sum", ``(N, d1, …, dk)`` for "none".
    """
    if not isinstance(reduction, str):
        raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}")
    # Static (hashable) options: they choose the computation, not its inputs.
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    for name, value in (("label_smoothing", label_smoothing), ("z_loss", z_loss), ("softcap", softcap)):
        if name == "softcap" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a Python float, got {value!r}")
    cap = None if softcap is None else float(softcap)
    return _cross_entropy(
        logits, labels, weight, reduction, ignore_index, float(label_smoothing), float(z_loss), cap
    )
