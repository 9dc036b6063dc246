"""``softmax_loss``, the public layer: route torch / JAX arrays, else validate and dispatch.

torch and JAX inputs may take a faster path (:mod:`xsoftmax._routing`: zero-copy
views to the NumPy or CuPy engine, or the torch autograd adapter); every
other call is validated and run by an engine (:mod:`xsoftmax._dispatch`,
:mod:`xsoftmax._engines`). The math is in :mod:`xsoftmax._engines.reference`
and :mod:`xsoftmax._reduction`.
"""

from __future__ import annotations

from ._dispatch import dispatch_softmax_loss
from ._routing import TORCH_AUTOGRAD, route, run_path
from ._typing import Array, Engine, Reduction

__all__ = ["softmax_loss"]


def softmax_loss(
    scores: Array,
    y: Array,
    /,
    *,
    reduction: Reduction = "mean",
    weight: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    engine: Engine = "auto",
    out: Array | None = None,
) -> tuple[Array, Array]:
    r"""Softmax cross-entropy loss and its gradient with respect to ``scores``.

    Inputs:

    - ``scores``: ``(N, C)`` real floating logits.
    - ``y``: ``(N,)`` integer labels in ``[0, C)`` (or ``== ignore_index``).
    - ``reduction``: ``"mean"`` (divide by the number of rows, or by
      ``Σ weight[y_i]`` with weights, ignored rows left out), ``"sum"`` or
      ``"none"`` (one loss per row).
    - ``weight``: optional ``(C,)`` class weights; ``ignore_index``: a label
      whose rows contribute nothing; ``label_smoothing``: ``ε`` in ``[0, 1]``,
      mixing the one-hot target with the uniform ``1/C``. All three mean what
      they mean in ``torch.nn.functional.cross_entropy``.
    - ``engine``: ``"auto"``, ``"reference"`` or ``"fused"``.
    - ``out``: optional ``(N, C)`` array of ``scores``' dtype that receives the
      gradient (pass ``out=scores`` to overwrite the scores in place and avoid
      any ``(N, C)`` allocation in the fused engines).

    Returns ``(loss, dscores)``: ``loss`` is 0-d (``"mean"``, ``"sum"``) or
    ``(N,)`` (``"none"``); ``dscores[i] = ∂loss/∂scores[i]``, in the plain case
    ``(softmax(scores) − onehot(y)) / N``. Both have ``scores``' dtype and
    live in its namespace and on its device. Inputs are never modified
    (except ``out``).
    """
    if engine == "auto":  # torch / JAX arrays: zero-copy views to the fast engines (_routing.py)
        path = route(scores, y, weight, out)
        if path == TORCH_AUTOGRAD:
            from .torch import _autograd_softmax_loss

            if out is not None:
                raise ValueError("out= cannot be combined with a scores tensor that requires grad")
            return _autograd_softmax_loss(
                scores, y, weight=weight, reduction=reduction, ignore_index=ignore_index,
                label_smoothing=label_smoothing,
            )  # fmt: skip
        if path is not None:
            routed = run_path(
                path, scores, y, weight=weight, out=out, reduction=reduction,
                ignore_index=ignore_index, label_smoothing=label_smoothing,
            )  # fmt: skip
            if routed is not None:
                return routed
    return dispatch_softmax_loss(
        scores, y, reduction=reduction, weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, engine=engine, out=out,
    )  # fmt: skip
