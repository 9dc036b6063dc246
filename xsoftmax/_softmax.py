r"""Softmax primitives and softmax cross-entropy, written once for every backend.

Only functions of the Python Array API standard are used, with no in-place
updates and no Python branching on array values, so this module runs
unchanged on NumPy, CuPy, PyTorch, JAX (also under ``jax.jit``), Dask
(lazily) and array-api-strict.

Stability. For a row ``s`` with maximum ``m``,

.. math::  \operatorname{lse}(s) = \log Σ_k e^{s_k} = m + \log Σ_k e^{s_k − m},

and every ``s_k − m ≤ 0``, so no exponential overflows and the largest one is
exactly 1. The loss of a row is ``lse(s) − s_y`` computed as
``log Σ e^{s_k − m} − (s_y − m)``, never as ``−log(softmax(s)_y)``: that
would round ``p_y`` to 0 and return ``inf`` for logits a few hundred apart.
A maximum that is not finite (a row of ``−inf``, a masked-out row) is
replaced by 0 before shifting, so such a row gives ``exp(−inf) = 0`` instead
of ``−inf − (−inf) = NaN``.
"""

from __future__ import annotations

from typing import Any

from ._backend import array_namespace, device, scalar_like
from ._dtypes import compute_dtype
from ._engines import select_engine
from ._reduction import reduce_loss, row_loss
from ._routing import routed_softmax_loss
from ._typing import Array, ArrayNamespace
from ._validate import LossInputs, bad_labels, check_floating, check_loss_inputs, check_out

__all__ = [
    "log_softmax",
    "logsumexp",
    "one_hot",
    "reference_softmax_loss",
    "softmax",
    "softmax_loss",
]


def _shifted(xp: ArrayNamespace, x: Array, axis: int) -> tuple[Array, Array]:
    """``(x − m, m)`` with ``m`` the max along ``axis`` (kept), reset to 0 if not finite."""
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, scalar_like(xp, 0.0, m))
    return x - m, m


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


def _widen(xp: ArrayNamespace, x: Array) -> Array:
    cdt = compute_dtype(xp, x.dtype)
    return x if cdt == x.dtype else xp.astype(x, cdt)


def logsumexp(x: Array, /, *, axis: int = -1, keepdims: bool = False) -> Array:
    r"""``log Σ_k exp(x_k)`` along ``axis``, stable for any finite or ``−inf`` input.

    Computed as ``m + log Σ exp(x − m)`` with ``m = max(x)``. A slice of all
    ``−inf`` gives ``−inf``; float16 is computed in float32.
    """
    xp, x, axis = _primitive_input(x, axis)
    z, m = _shifted(xp, _widen(xp, x), axis)
    out = m + xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))
    if not keepdims:
        out = xp.squeeze(out, axis=axis)
    return xp.astype(out, x.dtype) if out.dtype != x.dtype else out


def softmax(x: Array, /, *, axis: int = -1) -> Array:
    r"""``p_k = exp(x_k − m) / Σ_j exp(x_j − m)`` along ``axis`` (``m`` the max)."""
    xp, x, axis = _primitive_input(x, axis)
    z, _ = _shifted(xp, _widen(xp, x), axis)
    e = xp.exp(z)
    p = e / xp.sum(e, axis=axis, keepdims=True)
    return xp.astype(p, x.dtype) if p.dtype != x.dtype else p


def log_softmax(x: Array, /, *, axis: int = -1) -> Array:
    r"""``log p_k = (x_k − m) − log Σ_j exp(x_j − m)``: never ``log(softmax(x))``."""
    xp, x, axis = _primitive_input(x, axis)
    z, _ = _shifted(xp, _widen(xp, x), axis)
    out = z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))
    return xp.astype(out, x.dtype) if out.dtype != x.dtype else out


def one_hot(xp: ArrayNamespace, y: Array, num_classes: int) -> Array:
    """Boolean ``(N, C)`` mask with ``mask[i, k] = (y_i == k)``.

    The portable replacement for ``d[range(N), y] -= 1``, which needs
    in-place fancy indexing that JAX, Dask and the standard do not have.
    Labels outside ``[0, C)`` (ignored rows) give an all-False row.
    """
    classes = xp.arange(num_classes, dtype=y.dtype, device=device(y))
    # y[:, None] rather than expand_dims: it also works for Dask arrays of
    # unknown length (after boolean filtering), where expand_dims reshapes.
    return y[:, None] == classes


def reference_softmax_loss(inp: LossInputs, *, out: Array | None = None) -> tuple[Array, Array]:
    r"""The generic engine: several array passes, readable rather than fast.

    With ``z = s − m`` (row max ``m``), ``l = log Σ_k e^{z_k}``,
    ``p = e^{z} / Σ e^{z}``, ``t = z_y`` and ``u = Σ_k w_k z_k``, the loss is
    assembled by :func:`xsoftmax._reduction.row_loss` and the gradient is

    .. math::  ∂\text{loss}/∂s_{ik} = c_i p_{ik} − a_i 1[k = y_i] − b_i w_k,

    i.e. ``(p − onehot(y)) / N`` in the plain case: the "−1" of CS231n's
    ``dscores[range(N), y] -= 1``.
    """
    xp, s, y, weight = inp.xp, inp.scores, inp.y, inp.weight
    n, c = s.shape
    s = _widen(xp, s)
    w = None if weight is None else xp.astype(weight, s.dtype)
    z, _ = _shifted(xp, s, 1)
    e = xp.exp(z)
    se = xp.sum(e, axis=1)
    l = xp.log(se)  # noqa: E741 (the l of the docstring)
    hot = one_hot(xp, y, c)
    zero = scalar_like(xp, 0.0, z)
    t = xp.sum(xp.where(hot, z, zero), axis=1)
    u = None
    if inp.label_smoothing:
        u = xp.sum(z * w, axis=1) if w is not None else xp.sum(z, axis=1)
    coef = inp.coefficients(y, weight=w, dtype=s.dtype, denom=inp.denom)
    rows = row_loss(xp, coef, l, t, u)

    col = lambda v: v[:, None]  # noqa: E731
    d = col(coef.c) * (e / col(se)) - xp.where(hot, col(coef.a), zero)
    if coef.b is not None:
        d = d - col(coef.b) * (w if w is not None else scalar_like(xp, 1.0, z))
    if inp.labels_unchecked:
        # Traced JAX labels cannot raise; a bad label poisons its row with NaN.
        bad = bad_labels(y, c, inp.ignore_index)
        nan = scalar_like(xp, float("nan"), z)
        rows = xp.where(bad, nan, rows)
        d = xp.where(col(bad), nan, d)
    loss = reduce_loss(xp, coef, rows, inp.reduction)
    dtype = inp.scores.dtype
    if loss.dtype != dtype:
        loss, d = xp.astype(loss, dtype), xp.astype(d, dtype)
    if out is not None:
        out[...] = d
        d = out
    return loss, d


def softmax_loss(
    scores: Array,
    y: Array,
    /,
    *,
    reduction: str = "mean",
    weight: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    engine: str = "auto",
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
        routed = routed_softmax_loss(
            scores, y, reduction=reduction, weight=weight, ignore_index=ignore_index,
            label_smoothing=label_smoothing, out=out,
        )
        if routed is not None:
            return routed
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
    return select_engine(inp.xp, engine)(inp, out=out)
