"""``softmax_loss``, the public layer: route torch / JAX arrays, else validate and dispatch.

torch and JAX inputs may take a faster path (:mod:`xsoftmax._routing`: zero-copy
views to the NumPy or CuPy engine, or the torch autograd adapter); every
other call is validated and run by an engine (:mod:`xsoftmax._dispatch`,
:mod:`xsoftmax._engines`). The math is in :mod:`xsoftmax._engines.reference`
and :mod:`xsoftmax._reduction`.
"""

from __future__ import annotations

import numpy as np

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
    z_loss: float = 0.0,
    softcap: float | None = None,
    engine: Engine = "auto",
    out: Array | None = None,
) -> tuple[Array, Array]:
    r"""Softmax cross-entropy loss and its gradient with respect to ``scores``.

    Inputs:

    - ``scores``: ``(N, C)`` real floating logits, or ``(N, C, d1, …, dk)``
      (class axis 1: one row per position ``(n, d1, …)``, as in torch), or
      one ``(C,)`` row.
    - ``y``: integer labels in ``[0, C)`` (or ``== ignore_index``) of shape
      ``(N,)`` / ``(N, d1, …, dk)`` / ``()``; or floating class
      probabilities ``q`` of ``scores``' shape: row loss ``−Σ_k w_k q_k log p_k``,
      gradient ``(Σ_k w_k q_k) p − w ⊙ q``; ``q`` need not sum to 1 (as in
      torch); "mean" divides by the number of rows, never by the weights;
      ``ignore_index`` is an error there.
    - ``reduction``: ``"mean"`` (divide by the number of rows, or by
      ``Σ weight[y_i]`` with weights, ignored rows left out), ``"sum"`` or
      ``"none"`` (one loss per row).
    - ``weight``: optional ``(C,)`` class weights; ``ignore_index``: a label
      whose rows contribute nothing; ``label_smoothing``: ``ε`` in ``[0, 1]``,
      mixing the one-hot target with the uniform ``1/C``. All three mean what
      they mean in ``torch.nn.functional.cross_entropy``.
    - ``z_loss``: ``ζ ≥ 0`` adds ``ζ · lse(z_i)²`` per counted row (PaLM's
      z-loss; unweighted; "mean" divides it by the number of counted rows,
      even with class weights), gradient ``2ζ lse_i p_i``.
    - ``softcap``: ``c > 0`` replaces the logits by ``z = c · tanh(s / c)``
      before everything else (Gemma 2); the gradient is chained through
      ``1 − tanh²(s/c)``. None: no cap, and no cost.
    - ``engine``: ``"auto"``, ``"reference"`` or ``"fused"``.
    - ``out``: optional array of ``scores``' shape and dtype that receives the
      gradient (pass ``out=scores`` to overwrite the scores in place and avoid
      any ``(N, C)`` allocation in the fused engines).

    Returns ``(loss, dscores)``: ``loss`` is 0-d (``"mean"``, ``"sum"``) or
    ``(N,)`` / ``(N, d1, …, dk)`` (``"none"``); ``dscores[i] = ∂loss/∂scores[i]``, in the plain case
    ``(softmax(scores) − onehot(y)) / N``. Both have ``scores``' dtype and
    live in its namespace and on its device. Inputs are never modified
    (except ``out``).
    """
    # torch / JAX arrays: zero-copy views to the fast engines (_routing.py); NumPy's skip the look.
    if engine == "auto" and type(scores) is not np.ndarray:
        path = route(scores, y, weight, out)
        if path == TORCH_AUTOGRAD:
            from .torch import _autograd_softmax_loss

            if out is not None:
                raise ValueError("out= cannot be combined with a scores tensor that requires grad")
            # z_loss / softcap only when set: the adapter's signature gains them in issue 15 (xsoftmax.torch).
            extra = {k: v for k, v in (("z_loss", z_loss), ("softcap", softcap)) if v not in (0.0, None)}
            return _autograd_softmax_loss(
                scores, y, weight=weight, reduction=reduction, ignore_index=ignore_index,
                label_smoothing=label_smoothing, **extra,
            )  # fmt: skip
        if path is not None:
            routed = run_path(
                path, scores, y, weight=weight, out=out, reduction=reduction,
                ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
            )  # fmt: skip
            if routed is not None:
                return routed
    return dispatch_softmax_loss(
        scores, y, reduction=reduction, weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, engine=engine, out=out,
    )  # fmt: skip
