r"""Validate the loss arguments, then run the selected engine: ``softmax_loss`` without routing.

:func:`xsoftmax.softmax_loss` first offers torch and JAX arrays to
:mod:`xsoftmax._routing` (zero-copy views to the fast engines, or the torch
autograd adapter), then comes here. The adapters and the routes call this
function directly, on arrays that need no routing, so no module imports the
public layer back.

Engines see 2-D ``(R, C)`` scores only. K-dimensional batches (``scores``
``(N, C, d1, …, dk)``, class axis 1) are ``R = N·d1⋯dk`` rows, one per
position, in :mod:`xsoftmax._batch`.
"""

from __future__ import annotations

from ._batch import kdim_softmax_loss
from ._engines import select_engine
from ._typing import Array, Engine, Reduction
from ._validate import check_loss_inputs, check_out

__all__ = ["dispatch_softmax_loss"]


def dispatch_softmax_loss(
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
    """``softmax_loss``'s checks and engine call (its arguments and results)."""
    inp = check_loss_inputs(
        scores,
        y,
        reduction=reduction,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        engine=engine,
        z_loss=z_loss,
        softcap=softcap,
        kdim=True,
    )
    if out is not None:
        check_out(inp.xp, out, scores)
    run = select_engine(inp.backend, engine)
    if scores.ndim == 2:
        return run(inp, out=out)
    return kdim_softmax_loss(run, inp, out=out)
