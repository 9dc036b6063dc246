"""Softmax primitives and softmax cross-entropy: the public layer.

Each function validates its arguments, then computes: the primitives with
the generic code of :mod:`xsoftmax._engines.reference` (a few array calls),
``softmax_loss`` by dispatching to an engine (:mod:`xsoftmax._engines`).
The math and its stability argument are in that module's docstring.
"""

from __future__ import annotations

from typing import Any

from ._backend import array_namespace
from ._dtypes import narrow, widen
from ._engines import select_engine
from ._engines.reference import shifted
from ._typing import Array, ArrayNamespace, Engine, Reduction
from ._validate import check_floating, check_loss_inputs, check_out

__all__ = ["log_softmax", "logsumexp", "softmax", "softmax_loss"]


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
    inp = check_loss_inputs(
        scores,
        y,
        reduction=reduction,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        engine=engine,
    )
    if out is not None:
        check_out(inp.xp, out, scores)
    return select_engine(inp.backend, engine)(inp, out=out)
