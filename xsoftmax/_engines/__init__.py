"""Engine dispatch: which implementation of ``softmax_loss`` runs.

An engine is a function ``softmax_loss(inputs: LossInputs, *, out=None) ->
(loss, dscores)`` that receives arguments already validated by
:func:`xsoftmax._validate.check_loss_inputs` and computes the per-row
coefficients with :mod:`xsoftmax._reduction`, like every other engine.

* ``"reference"``: the generic Array API code in :mod:`xsoftmax._softmax`,
  for every backend.
* ``"fused"``: the backend's own fast engine, listed in :data:`FUSED`; a
  ``ValueError`` for a backend that has none.
* ``"auto"``: the fused engine where the backend has one, else the reference.
* ``"fused-row"``: the CuPy row-fused kernel (one read and one write of the
  scores; see :func:`xsoftmax._engines.cupy.softmax_loss_row`), CuPy arrays
  only. ``"auto"`` does not pick it until a GPU measurement shows it faster.

Engine modules are imported on first use, so ``import xsoftmax`` never
imports CuPy or Dask.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .._backend import backend_name
from .._typing import ArrayNamespace

__all__ = ["FUSED", "select_engine"]

#: backend name -> module holding that backend's fused ``softmax_loss``.
FUSED: dict[str, str] = {
    "cupy": "xsoftmax._engines.cupy",
    "dask": "xsoftmax._engines.dask",
    "numpy": "xsoftmax._engines.numpy",
}

EngineFn = Callable[..., Any]


def _reference() -> EngineFn:
    from .._softmax import reference_softmax_loss

    return reference_softmax_loss


def select_engine(xp: ArrayNamespace, engine: str) -> EngineFn:
    """The engine function for inputs of namespace ``xp`` and option ``engine``."""
    if engine == "reference":
        return _reference()
    name = backend_name(xp)
    if engine == "fused-row":
        if name != "cupy":
            raise ValueError(
                f"engine='fused-row' runs when the scores are CuPy arrays, got {name} arrays; "
                "use engine='auto', 'fused' or 'reference'"
            )
        return importlib.import_module(FUSED["cupy"]).softmax_loss_row
    module = FUSED.get(name)
    if module is None:
        if engine == "fused":
            have = ", ".join(sorted(FUSED)) or "none"
            raise ValueError(
                f"engine='fused' is not available for {name} arrays (backends with a "
                f"fused engine: {have}); use engine='auto' or engine='reference'"
            )
        return _reference()
    return importlib.import_module(module).softmax_loss
