"""Type aliases shared by the package (one place, so signatures stay readable)."""

from __future__ import annotations

from types import ModuleType
from typing import Any, Literal

__all__ = ["Array", "ArrayNamespace", "Device", "DType", "Engine", "Reduction"]

#: Any array object that array-api-compat recognises (NumPy, CuPy, torch, ...).
Array = Any
#: The module-like object returned by ``array_namespace``.
ArrayNamespace = ModuleType
Device = Any
DType = Any
Reduction = Literal["mean", "sum", "none"]
Engine = Literal["auto", "reference", "fused", "fused-row"]
