"""Input checks shared by every public entry point and every engine.

Each check raises ``ValueError`` (wrong shape, out-of-range value, bad option)
or ``TypeError`` (wrong kind of object or dtype) with a message that names
the argument, what it got and what was expected. Checks read only metadata
(shape, dtype, namespace), except :func:`check_labels`, which must look at
the label values: it does so eagerly where the values are at hand, lazily
(at compute time) on Dask, and reports what it cannot check under a JAX
trace so the engine can poison the affected rows.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import numpy as np

from ._backend import backend_name, device, is_lazy, resolve
from ._reduction import LossInputs
from ._typing import Array, ArrayNamespace

__all__ = [
    "LossInputs",
    "bad_labels",
    "check_floating",
    "check_labels",
    "check_loss_inputs",
    "check_out",
    "check_positive_int",
    "check_same_device",
    "label_error",
]

REDUCTIONS = ("mean", "sum", "none")
ENGINES = ("auto", "reference", "fused", "fused-row")


def _shape(x: Array) -> tuple[Any, ...]:
    return tuple(x.shape)


def _known(dim: Any) -> bool:
    """False for a dimension a lazy backend does not know yet (None, or NaN on Dask)."""
    return dim is not None and not (isinstance(dim, float) and math.isnan(dim))


def _wide_labels(xp: ArrayNamespace, y: Array, num_classes: int, ignore_index: int | None) -> Array:
    """``y`` in a dtype that holds every class index and ``ignore_index``.

    Comparing int8/uint8 labels with 300 classes or ``ignore_index=-100`` wraps
    around on PyTorch and JAX (and raises on array-api-strict), so narrow
    labels are widened once here, for every engine.
    """
    if not _known(num_classes):
        return y
    info = _numpy_iinfo(y.dtype) if type(y) is np.ndarray else xp.iinfo(y.dtype)
    # C itself, not C − 1: the range check compares labels with C (uint8
    # labels with C = 256 would compare with 256 wrapped to 0).
    lo, hi = (num_classes, num_classes) if ignore_index is None else sorted((num_classes, ignore_index))
    if info.min <= lo and hi <= info.max:
        return y
    extremes = (lo, hi)
    i32 = xp.iinfo(xp.int32)
    fits32 = all(i32.min <= v <= i32.max for v in extremes)
    return xp.astype(y, xp.int32 if fits32 else xp.int64)


_numpy_iinfo = functools.cache(np.iinfo)
_UNSIGNED = {k: np.dtype(f"u{k}") for k in (1, 2, 4, 8)}


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` ≥ 1 (Python or NumPy integer, not bool), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_floating(xp: ArrayNamespace, x: Array, name: str) -> None:
    """``x`` must have a real floating dtype."""
    if not (x.dtype.kind == "f" if type(x) is np.ndarray else xp.isdtype(x.dtype, "real floating")):
        raise TypeError(f"{name} must have a real floating dtype, got {x.dtype}")


def check_same_device(xp: ArrayNamespace, names: tuple[str, ...], *arrays: Array) -> None:
    """All non-``None`` arrays must live on one device."""
    first = None
    for name, arr in zip(names, arrays, strict=True):
        if arr is None or is_lazy(arr):
            continue
        dev = device(arr)
        if first is None:
            first = (name, dev)
        elif dev != first[1]:
            raise ValueError(
                f"inputs live on two devices: {first[0]} is on {first[1]} but {name} is on {dev}"
            )


def label_error(row: int, value: int, num_classes: int, ignore_index: int | None) -> ValueError:
    """The one message for an out-of-range label, shared by all engines."""
    allowed = f"[0, {num_classes})"
    if ignore_index is not None:
        allowed += f" or ignore_index={ignore_index}"
    return ValueError(f"y[{row}] = {value} is out of range: labels must be in {allowed}")


def bad_labels(y: Array, num_classes: int, ignore_index: int | None) -> Array:
    """Boolean mask of labels outside ``[0, C)`` that are not ``ignore_index``."""
    bad = (y < 0) | (y >= num_classes)
    if ignore_index is not None:
        bad = bad & (y != ignore_index)
    return bad


def check_labels(
    xp: ArrayNamespace, y: Array, num_classes: int, ignore_index: int | None, *, backend: str | None = None
) -> tuple[Array, bool]:
    """Range-check labels; returns ``(y, unchecked)``.

    * eager arrays: checked now (the labels' min and max; only when they
      leave ``[0, C)`` the mask of bad labels, and on failure a lookup of
      the first bad row);
    * Dask arrays: a ``map_blocks`` check is threaded into the graph, so the
      ``ValueError`` is raised when the result is computed;
    * JAX tracers (and any label under ``jax.jit``): the values do not exist
      yet; ``unchecked`` is True and the engine marks rows with bad labels as NaN.

    ``backend``: ``backend_name(xp)`` when the caller knows it already.
    """
    backend = backend_name(xp) if backend is None else backend
    if backend == "numpy" and y.shape[0] and num_classes <= np.iinfo(np.int64).max:
        # One pass: as unsigned, a negative label is huge, so max < C says all
        # are in range (ignored rows and errors take the general path below).
        unsigned = y if y.dtype.kind == "u" else y.view(_UNSIGNED[y.dtype.itemsize])
        if int(np.maximum.reduce(unsigned)) < num_classes:
            return y, False
    if backend == "dask":
        return _dask_checked_labels(y, num_classes, ignore_index), False
    if is_lazy(y):
        return y, True
    if y.shape[0] == 0:
        return y, False
    # Two reductions and no (N,) temporaries decide the usual case (at C = 10
    # the mask's passes cost a fifth of the NumPy engine's whole pass).
    lo, hi = xp.min(y), xp.max(y)
    in_range = (lo >= 0) & (hi < num_classes)
    if is_lazy(in_range):
        return y, True  # traced under jax.jit, as below
    if bool(in_range):
        return y, False
    bad = bad_labels(y, num_classes, ignore_index)
    any_bad = xp.any(bad)
    if is_lazy(any_bad):
        # Under jax.jit every operation is traced, even on labels closed over
        # as concrete constants: their values are not readable here either.
        return y, True
    if bool(any_bad):
        row = int(xp.argmax(xp.astype(bad, xp.int8)))
        raise label_error(row, int(y[row]), num_classes, ignore_index)
    return y, False


def _dask_checked_labels(y: Array, num_classes: int, ignore_index: int | None) -> Array:
    import numpy as np

    def check_block(block: Any, block_info: Any = None) -> Any:
        bad = bad_labels(block, num_classes, ignore_index)
        if bool(bad.any()):
            local = int(np.argmax(bad.get() if hasattr(bad, "get") else bad))
            offset = block_info[0]["array-location"][0][0] if block_info else 0
            raise label_error(offset + local, int(block[local]), num_classes, ignore_index)
        return block

    return y.map_blocks(check_block, dtype=y.dtype)


def check_loss_inputs(
    scores: Any,
    y: Any,
    *,
    reduction: Any,
    weight: Any,
    ignore_index: Any,
    label_smoothing: Any,
    engine: Any,
) -> LossInputs:
    """Validate every argument of ``softmax_loss``; see DESIGN.md "Bad input"."""
    arrays = resolve(scores, y, weight, names=("scores", "y", "weight"))
    xp = arrays.xp
    if arrays.backend != "numpy":  # NumPy arrays: all on the CPU
        check_same_device(xp, ("scores", "y", "weight"), scores, y, weight)
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(engine, str) or engine not in ENGINES:
        device_hint = ""
        if isinstance(engine, str) and engine.lower() in ("cuda", "gpu", "cupy", "cpu", "numpy", "torch"):
            device_hint = (
                "; engines are not chosen by device: the GPU (fused CUDA) engine runs when the scores "
                "are CuPy arrays (xs.asarray(scores, backend='cupy')), the threaded CPU engine when "
                "they are NumPy arrays"
            )
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}{device_hint}")
    # numbers.Real / Integral: NumPy scalars (np.float32(0.1), np.int64(-100)) are fine too.
    if type(label_smoothing) is not float and (
        isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real)
    ):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {label_smoothing!r}")
    label_smoothing = float(label_smoothing)
    if not (0.0 <= label_smoothing <= 1.0) or math.isnan(label_smoothing):
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)
    ):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if ignore_index is not None:
        ignore_index = int(ignore_index)

    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D with shape (N, C), got shape {_shape(scores)}")
    check_floating(xp, scores, "scores")
    n, c = scores.shape
    if _known(c) and c < 1:
        raise ValueError(f"scores must have at least one class (C >= 1), got shape {_shape(scores)}")
    if y.ndim != 1:
        one_hot = ""
        if y.ndim == 2 and _shape(y) == _shape(scores):
            one_hot = (
                "; y looks like one-hot rows of shape (N, C): pass the class indices, "
                "y.argmax(axis=1)"
            )
        raise ValueError(f"y must be 1-D with shape (N,) = ({n},), got shape {_shape(y)}{one_hot}")
    if type(y) is np.ndarray:
        integral = y.dtype.kind in "iu"  # (NumPy's isdtype costs more than the labels' check)
    else:
        integral = not xp.isdtype(y.dtype, "bool") and xp.isdtype(y.dtype, "integral")
    if not integral:
        cast = ""
        if xp.isdtype(y.dtype, "real floating"):
            cast = "; cast labels stored as floats with y.astype(np.int64) (or xp.astype(y, xp.int64))"
        raise TypeError(f"y must have an integer dtype, got {y.dtype}{cast}")
    if _known(n) and _known(y.shape[0]) and y.shape[0] != n:
        raise ValueError(
            f"y must have one label per row of scores: scores has N = {n} rows, "
            f"y has shape {_shape(y)}"
        )
    if weight is not None:
        if weight.ndim != 1 or (_known(c) and _known(weight.shape[0]) and weight.shape[0] != c):
            raise ValueError(f"weight must have shape (C,) = ({c},), got shape {_shape(weight)}")
        check_floating(xp, weight, "weight")
    y = _wide_labels(xp, y, c, ignore_index)
    y, unchecked = check_labels(xp, y, c, ignore_index, backend=arrays.backend)
    return LossInputs(
        xp, scores, y, weight, ignore_index, label_smoothing, reduction, unchecked, backend=arrays.backend
    )


def check_out(xp: ArrayNamespace, out: Any, scores: Array) -> None:
    """``out`` must be a writable array like ``scores`` (same namespace, shape, dtype)."""
    if resolve(scores, out, names=("scores", "out")).backend != "numpy":
        check_same_device(xp, ("scores", "out"), scores, out)
    if _shape(out) != _shape(scores):
        raise ValueError(f"out must have the shape of scores {_shape(scores)}, got {_shape(out)}")
    if out.dtype != scores.dtype:
        raise TypeError(f"out must have the dtype of scores ({scores.dtype}), got {out.dtype}")
    if backend_name(xp) in ("jax", "array_api_strict", "dask"):
        raise TypeError(f"out= needs a mutable array; {backend_name(xp)} arrays are not writable in place")
    flags = getattr(out, "flags", None)
    if flags is not None and not getattr(flags, "writeable", True):
        raise ValueError("out is read-only; pass a writable array")
