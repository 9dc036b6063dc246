r"""K-dimensional batches and single rows: ``softmax_loss`` of scores that are not ``(N, C)``.

Scores ``(N, C, d1, …, dk)`` (class axis 1, as in torch) are ``R = N·d``
rows of ``C`` logits, ``d = d1⋯dk``: row ``(n, j)`` is ``scores[n, :, j]``.
Labels arrive flattened to ``(R,)`` (:func:`xsoftmax._validate.check_loss_inputs`),
probabilities with the scores' shape. "none" returns ``(N, d1, …, dk)``;
"mean" divides by the whole batch's ``D`` (and ``V`` for the z-loss) over
every position, exactly as one ``(R, C)`` call would; ``dscores`` has the
scores' shape. A 1-D ``(C,)`` score vector with a 0-d label is one row
(``"none"`` gives a 0-d loss), as torch accepts.

NumPy and CuPy never copy the batch into a transposed ``(R, C)`` array: each
sample ``scores[n]``, seen as ``(C, d)``, is transposed *as a view* into
``(d, C)`` rows with class stride ``d``, and the engine runs on it with the
global ``D`` and ``V`` passed as ``denom``/``zdenom``, writing its gradient
through the same view of the result. Samples smaller than a group buffer
(:data:`GROUP_ELEMENTS`, :data:`GROUP_SHARE`) go a group at a time through
two reused row-major buffers instead, where a call per sample on strided
rows would cost more than the copies. Per-sample (or per-group) totals are added in a
fixed order. Other backends move the class axis last and reshape (lazily on Dask,
inside the trace on JAX).
"""

from __future__ import annotations

import math

from ._backend import device
from ._dtypes import compute_dtype
from ._engines import SoftmaxLossEngine
from ._reduction import LossInputs, mean_denominator
from ._typing import Array

__all__ = ["kdim_softmax_loss"]

#: Backends whose engines take strided ``(d, C)`` views (class stride ``d``).
_STRIDED = ("numpy", "cupy")

#: Samples smaller than a group buffer run a few at a time through two row-major
#: buffers (scores in, gradient out): a copy per group, not of the batch. One engine
#: call per small sample, on rows of class stride d, costs more than the copies
#: (docs/backends.md). A buffer holds at most GROUP_ELEMENTS values and at most
#: 1/GROUP_SHARE of the batch, so the two add at most 1/16 of the gradient's memory.
GROUP_ELEMENTS = 1 << 20
GROUP_SHARE = 32


def kdim_softmax_loss(
    run: SoftmaxLossEngine, inp: LossInputs, /, *, out: Array | None = None
) -> tuple[Array, Array]:
    """``run`` (an engine) on scores of shape ``(C,)`` or ``(N, C, d1, …, dk)``; see the module docstring."""
    xp, scores = inp.xp, inp.scores
    if scores.ndim == 1:
        return _single_row(run, inp, out)
    shape = tuple(scores.shape)
    d = math.prod(shape[2:])
    if inp.backend in _STRIDED and shape[0] and d and shape[1]:
        return _per_sample(run, inp, out, d)
    probs = _probabilities(inp)
    perm = (0, *range(2, scores.ndim), 1)  # class axis last
    rows = (-1, shape[1])
    s2 = xp.reshape(xp.permute_dims(scores, perm), rows)
    y2 = xp.reshape(xp.permute_dims(inp.y, perm), rows) if probs else inp.y
    loss, d2 = run(inp._replace(scores=s2, y=y2))
    back = (0, scores.ndim - 1, *range(1, scores.ndim - 1))
    grad = xp.permute_dims(xp.reshape(d2, (shape[0], *shape[2:], shape[1])), back)
    if inp.reduction == "none":
        loss = xp.reshape(loss, (shape[0], *shape[2:]))
    if out is not None:
        out[...] = grad
        grad = out
    return loss, grad


def _single_row(run: SoftmaxLossEngine, inp: LossInputs, out: Array | None) -> tuple[Array, Array]:
    """Scores ``(C,)``: one row; y a 0-d label (flattened to ``(1,)``) or ``(C,)`` probabilities."""
    xp, s = inp.xp, inp.scores
    c = s.shape[0]
    y = xp.reshape(inp.y, (1, c)) if _probabilities(inp) else inp.y
    loss, grad = run(inp._replace(scores=xp.reshape(s, (1, c)), y=y))
    if inp.reduction == "none":
        loss = xp.reshape(loss, ())
    grad = xp.reshape(grad, (c,))
    if out is not None:
        out[...] = grad
        grad = out
    return loss, grad


def _probabilities(inp: LossInputs) -> bool:
    """Probability targets (floating ``y``; the checks made labels integral)."""
    return bool(inp.xp.isdtype(inp.y.dtype, "real floating"))


def _per_sample(run: SoftmaxLossEngine, inp: LossInputs, out: Array | None, d: int) -> tuple[Array, Array]:
    """NumPy / CuPy: the engine on each sample's strided ``(d, C)`` view, with the global ``D``, ``V``."""
    xp, scores, y = inp.xp, inp.scores, inp.y
    shape = tuple(scores.shape)
    n, c = shape[0], shape[1]
    probs = _probabilities(inp)
    cdt = compute_dtype(xp, scores.dtype)
    denom = zdenom = None
    if inp.reduction == "mean":
        if probs:
            denom = zdenom = xp.asarray(float(n * d), dtype=cdt, device=device(scores))
        else:
            denom = mean_denominator(xp, y, weight=inp.weight, ignore_index=inp.ignore_index, dtype=cdt)
            if inp.z_loss:
                zdenom = mean_denominator(xp, y, weight=None, ignore_index=inp.ignore_index, dtype=cdt)
    # The result is C-contiguous, so (N, C, d) of it is a view; a strided out= gets it copied in.
    target = out if out is not None and _c_contiguous(out) else xp.empty(shape, dtype=scores.dtype)
    s3 = xp.reshape(scores, (n, c, d))  # a view unless the scores themselves are strided
    o3 = xp.reshape(target, (n, c, d))
    q3 = xp.reshape(y, (n, c, d)) if probs else None
    rows = xp.empty((n, d), dtype=scores.dtype) if inp.reduction == "none" else None
    totals = []
    group = max(1, min(GROUP_ELEMENTS, n * d * c // GROUP_SHARE) // (d * c))
    if group > 1:  # small samples: a few samples at a time, copied into row-major buffers
        buf = xp.empty((min(group, n) * d, c), dtype=scores.dtype, device=device(scores))
        grad = xp.empty_like(buf)  # a separate out= keeps the engine on its direct path
        qbuf = None if q3 is None else xp.empty((buf.shape[0], c), dtype=y.dtype, device=device(y))
    for i in range(0, n, group):
        k = min(group, n - i)
        if group == 1:  # the sample's own strided (d, C) view
            yi = q3[i].T if q3 is not None else y[i * d : (i + 1) * d]
            part = inp._replace(scores=s3[i].T, y=yi, denom=denom, zdenom=zdenom)
            loss_i, _ = run(part, out=o3[i].T)
        else:
            block = buf[: k * d]
            xp.reshape(block, (k, d, c))[...] = xp.permute_dims(s3[i : i + k], (0, 2, 1))
            if qbuf is not None and q3 is not None:
                yi = qbuf[: k * d]
                xp.reshape(yi, (k, d, c))[...] = xp.permute_dims(q3[i : i + k], (0, 2, 1))
            else:
                yi = y[i * d : (i + k) * d]
            part = inp._replace(scores=block, y=yi, denom=denom, zdenom=zdenom)
            loss_i, _ = run(part, out=grad[: k * d])
            xp.permute_dims(o3[i : i + k], (0, 2, 1))[...] = xp.reshape(grad[: k * d], (k, d, c))
        if rows is not None:
            rows[i : i + k] = xp.reshape(loss_i, (k, d))
        else:
            totals.append(xp.astype(xp.asarray(loss_i), cdt))
    if out is not None and target is not out:
        out[...] = target
        target = out
    if rows is not None:
        return xp.reshape(rows, (n, *shape[2:])), target
    total = xp.sum(xp.stack(totals))  # per-sample "mean" parts share D, V: their sum is the mean
    return xp.asarray(total, dtype=scores.dtype), target


def _c_contiguous(a: Array) -> bool:
    flags = getattr(a, "flags", None)
    return bool(flags is not None and flags.c_contiguous)
