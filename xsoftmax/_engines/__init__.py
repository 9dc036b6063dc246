"""Engine dispatch: which implementation of ``softmax_loss`` runs.

An engine is a :class:`SoftmaxLossEngine`: a function
``softmax_loss(inputs: LossInputs, /, *, out=None) -> (loss, dscores)`` that
receives arguments already validated by
:func:`xsoftmax._validate.check_loss_inputs` and takes the loss semantics
(coefficients, ``D``, the reduction) from :mod:`xsoftmax._reduction`.

* ``"reference"``: the generic Array API code (:mod:`.reference`), for
  every backend.
* a backend's name (``"numpy"``, ``"cupy"``, ``"dask"``): that backend's
  fused engine, chosen by ``engine="fused"`` (a ``ValueError`` for a backend
  that has none) and by ``engine="auto"`` (else the reference).
* ``engine="fused-row"``: the CuPy row-fused kernel (one read and one write
  of the scores; :func:`xsoftmax._engines.cupy.softmax_loss_row`), CuPy
  arrays only. ``"auto"`` does not pick it until a GPU measurement shows it faster.

Engine modules are imported on first use, so ``import xsoftmax`` never
imports CuPy or Dask; the engine is looked up at each call, so a test may
replace a module's ``softmax_loss``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Protocol

from .._reduction import LossInputs
from .._typing import Array

__all__ = ["ENGINES", "REFERENCE", "SoftmaxLossEngine", "has_fused", "select_engine"]


class SoftmaxLossEngine(Protocol):
    """The contract of every engine."""

    def __call__(self, inputs: LossInputs, /, *, out: Array | None = None) -> tuple[Array, Array]: ...


#: The key of the generic engine in :data:`ENGINES`.
REFERENCE = "reference"

#: engine name -> module holding its ``softmax_loss``: the reference engine,
#: and each backend's fused engine under the backend's name.
ENGINES: dict[str, str] = {
    REFERENCE: "xsoftmax._engines.reference",
    "cupy": "xsoftmax._engines.cupy",
    "dask": "xsoftmax._engines.dask",
    "numpy": "xsoftmax._engines.numpy",
}


def has_fused(backend: str) -> bool:
    """Whether backend ``backend`` (a name, as ``backend_name`` gives) has a fused engine."""
    return backend != REFERENCE and backend in ENGINES


def _module(name: str) -> Any:
    """The engine module ``name``, imported on first use (also when threads ask at once)."""
    module = sys.modules.get(name)
    # A module another thread is still importing is in sys.modules half made: import_module waits for it.
    if module is None or getattr(module.__spec__, "_initializing", False):
        module = importlib.import_module(name)
    return module


def _load(key: str) -> SoftmaxLossEngine:
    name = ENGINES[key]
    fn: SoftmaxLossEngine = _module(name).softmax_loss
    return fn


def select_engine(backend: str, engine: str) -> SoftmaxLossEngine:
    """The engine function for arrays of backend ``backend`` and option ``engine``."""
    if engine == REFERENCE:
        return _load(REFERENCE)
    if engine == "fused-row":
        if backend != "cupy":
            raise ValueError(
                f"engine='fused-row' runs when the scores are CuPy arrays, got {backend} arrays; "
                "use engine='auto', 'fused' or 'reference'"
            )
        row: SoftmaxLossEngine = _module(ENGINES["cupy"]).softmax_loss_row
        return row
    if has_fused(backend):
        return _load(backend)
    if engine == "fused":
        have = ", ".join(sorted(k for k in ENGINES if k != REFERENCE)) or "none"
        raise ValueError(
            f"engine='fused' is not available for {backend} arrays (backends with a "
            f"fused engine: {have}); use engine='auto' or engine='reference'"
        )
    return _load(REFERENCE)
