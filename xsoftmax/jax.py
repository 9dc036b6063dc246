r"""JAX adapter: ``cross_entropy`` as a ``jax.custom_vjp`` whose forward pass keeps the gradient.

::

    from xsoftmax.jax import cross_entropy
    loss, g = jax.jit(jax.value_and_grad(cross_entropy))(logits, labels)

``cross_entropy(logits, labels, *, reduction="mean", weight=None,
ignore_index=None, label_smoothing=0.0)`` is ``xs.softmax_loss``'s loss
(optax's ``softmax_cross_entropy_with_integer_labels`` plus torch's options;
``ignore_index`` in xsoftmax's sense: None ignores nothing). The forward pass
computes the loss and

.. math::  G_{ik} = ∂\text{loss}/∂s_{ik} = c_i p_{ik} − a_i 1[k = y_i] − b_i w_k

together, with the reference engine's Array API code in ``jax.numpy``, and
keeps ``G`` as the residual; the backward pass is ``g · G`` (row ``i`` scaled
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
from typing import Any

import jax

from ._softmax import reference_softmax_loss
from ._validate import check_loss_inputs

__all__ = ["cross_entropy"]

# ---------------------------------------------------------------------------
# The fused linear + loss adapter (xsoftmax/_jax_linear.py) is re-exported
# here by the lead: linear_cross_entropy.
# ---------------------------------------------------------------------------


def _loss_and_grad(
    logits: Any, labels: Any, weight: Any, reduction: str, ignore_index: int | None, label_smoothing: float
) -> tuple[Any, Any]:
    inp = check_loss_inputs(
        logits,
        labels,
        reduction=reduction,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        engine="reference",
    )
    return reference_softmax_loss(inp)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _cross_entropy(
    logits: Any, labels: Any, weight: Any, reduction: str, ignore_index: int | None, label_smoothing: float
) -> Any:
    return _loss_and_grad(logits, labels, weight, reduction, ignore_index, label_smoothing)[0]


def _fwd(
    logits: Any, labels: Any, weight: Any, reduction: str, ignore_index: int | None, label_smoothing: float
) -> tuple[Any, Any]:
    loss, d = _loss_and_grad(logits, labels, weight, reduction, ignore_index, label_smoothing)
    return loss, (d, weight)


def _bwd(
    reduction: str, ignore_index: int | None, label_smoothing: float, res: Any, g: Any
) -> tuple[Any, None, Any]:
    d, weight = res
    grad = d * (g[:, None] if reduction == "none" else g).astype(d.dtype)
    zero_weight = None if weight is None else jax.numpy.zeros_like(weight)
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
) -> Any:
    """Softmax cross-entropy of ``logits`` (N, C) and integer ``labels`` (N,), differentiable in ``logits``.

    Options as in ``xs.softmax_loss``. Returns the loss: 0-d for "mean" /
    "sum", (N,) for "none".
    """
    if not isinstance(reduction, str):
        raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}")
    # Static (hashable) options: they choose the computation, not its inputs.
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {label_smoothing!r}")
    return _cross_entropy(logits, labels, weight, reduction, ignore_index, float(label_smoothing))
