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
_INT64_MAX = int(np.iinfo(np.int64).max)
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
    if backend == "numpy" and y.shape[0] and num_classes <= _INT64_MAX:
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
    z_loss: Any = 0.0,
    softcap: Any = None,
    kdim: bool = False,
) -> LossInputs:
    """Validate every argument of ``softmax_loss``: ``ValueError`` / ``TypeError`` naming the argument.

    ``y`` holds integer class labels, or floating class probabilities of the
    scores' shape. ``kdim=False``: scores must be ``(N, C)`` (the entry points
    that take only 2-D scores). ``kdim=True`` (``softmax_loss``): also
    ``(N, C, d1, …, dk)`` with labels ``(N, d1, …, dk)``, and ``(C,)`` with a
    0-d label; the returned ``LossInputs`` then keeps the scores' shape and
    holds labels flattened to ``(N·d1⋯dk,)`` (rows in C order), for
    :mod:`xsoftmax._dispatch` to turn into the engines' 2-D rows.
    """
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
    label_smoothing = _real_option(label_smoothing, "label_smoothing", "a float in [0, 1]")
    if not (0.0 <= label_smoothing <= 1.0) or math.isnan(label_smoothing):
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    z_loss = _real_option(z_loss, "z_loss", "a float >= 0")
    if not (0.0 <= z_loss < math.inf):
        raise ValueError(f"z_loss must be a finite float >= 0, got {z_loss!r}")
    if softcap is not None:
        softcap = _real_option(softcap, "softcap", "None or a float > 0")
        if not (0.0 < softcap < math.inf):
            raise ValueError(f"softcap must be None or a finite float > 0, got {softcap!r}")
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)
    ):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if ignore_index is not None:
        ignore_index = int(ignore_index)

    _check_scores_shape(scores, kdim)
    check_floating(xp, scores, "scores")
    c = scores.shape[1] if scores.ndim > 1 else scores.shape[0]
    if _known(c) and c < 1:
        raise ValueError(f"scores must have at least one class (C >= 1), got shape {_shape(scores)}")
    if weight is not None:
        if weight.ndim != 1 or (_known(c) and _known(weight.shape[0]) and weight.shape[0] != c):
            raise ValueError(f"weight must have shape (C,) = ({c},), got shape {_shape(weight)}")
        check_floating(xp, weight, "weight")
    options = dict(z_loss=z_loss, softcap=softcap, backend=arrays.backend)
    if _is_probability_dtype(xp, y):
        if not _same_shape(_shape(y), _shape(scores)):
            raise ValueError(
                f"y: a floating y holds class probabilities and must have the scores' shape "
                f"{_shape(scores)}, got shape {_shape(y)}; for class labels y must have an integer "
                "dtype: cast labels stored as floats with y.astype(np.int64) (or xp.astype(y, xp.int64))"
            )
        if ignore_index is not None:
            raise ValueError(
                f"ignore_index={ignore_index} is not supported with probability targets (a floating y); "
                "pass ignore_index=None, as torch.nn.functional.cross_entropy refuses it too"
            )
        return LossInputs(xp, scores, y, weight, None, label_smoothing, reduction, False, **options)
    y = _check_label_shape(xp, scores, y)
    y = _wide_labels(xp, y, c, ignore_index)
    y, unchecked = check_labels(xp, y, c, ignore_index, backend=arrays.backend)
    return LossInputs(xp, scores, y, weight, ignore_index, label_smoothing, reduction, unchecked, **options)


def _real_option(value: Any, name: str, expected: str) -> float:
    """``value`` as a float: a Python or NumPy real (not bool), else ``TypeError``."""
    if type(value) is not float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def _same_shape(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Equal shapes, a dimension a lazy backend does not know yet matching anything."""
    if len(a) != len(b):
        return False
    return all(not (_known(i) and _known(j)) or i == j for i, j in zip(a, b, strict=True))


def _is_probability_dtype(xp: ArrayNamespace, y: Array) -> bool:
    if type(y) is np.ndarray:
        return bool(y.dtype.kind == "f")
    return bool(xp.isdtype(y.dtype, "real floating"))


def _check_scores_shape(scores: Array, kdim: bool) -> None:
    if kdim:
        if scores.ndim < 1:
            raise ValueError(
                "scores must have shape (N, C), (N, C, d1, ..., dk) or (C,), got a 0-d array"
            )
    elif scores.ndim != 2:
        raise ValueError(f"scores must be 2-D with shape (N, C), got shape {_shape(scores)}")


def _check_label_shape(xp: ArrayNamespace, scores: Array, y: Array) -> Array:
    """Integer labels of the shape the scores call for; returned as ``(R,)`` rows."""
    shape = _shape(scores)
    if scores.ndim == 1:
        expected: tuple[Any, ...] = ()
    else:
        expected = (shape[0], *shape[2:])
    if type(y) is np.ndarray:
        integral = y.dtype.kind in "iu"  # (NumPy's isdtype costs more than the labels' check)
    else:
        integral = not xp.isdtype(y.dtype, "bool") and xp.isdtype(y.dtype, "integral")
    if y.ndim == len(expected) + 1 and _same_shape(_shape(y), shape) and integral:
        raise ValueError(
            f"y has the scores' shape {shape} but an integer dtype: pass class indices of "
            f"shape {expected}{' (one-hot rows: y.argmax(axis=1))' if shape[1:] else ''}, or cast class "
            "probabilities to a floating dtype"
        )
    if y.ndim != len(expected):
        if scores.ndim == 2:
            raise ValueError(f"y must be 1-D with shape (N,) = ({shape[0]},), got shape {_shape(y)}")
        raise ValueError(
            f"y must have shape {expected} (scores {shape} without the class axis 1), "
            f"got shape {_shape(y)}"
        )
    if not integral:
        raise TypeError(
            f"y must have an integer dtype, got {y.dtype} (or a floating dtype for class probabilities)"
        )
    if scores.ndim == 2:
        if _known(shape[0]) and _known(y.shape[0]) and y.shape[0] != shape[0]:
            raise ValueError(
                f"y must have one label per row of scores: scores has N = {shape[0]} rows, "
                f"y has shape {_shape(y)}"
            )
        return y
    if not _same_shape(_shape(y), expected):
        raise ValueError(
            f"y must have shape {expected} (scores {shape} without the class axis 1), "
            f"got shape {_shape(y)}"
        )
    return xp.reshape(y, (-1,))


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
