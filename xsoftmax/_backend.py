"""Backends: namespace inference, the registry of known backends, the default.

Compute functions never consult the default backend: they follow their
inputs (``array_namespace``). The default backend only decides where *new*
arrays are created (:func:`asarray`, networks, data sets). It lives in a
:class:`contextvars.ContextVar`, so each thread and each asyncio task sees its
own value.

No optional backend is imported here at module import time; each one is
imported only when the user asks for it by name or hands us one of its arrays.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import array_api_compat as compat
import numpy as np

from ._typing import Array, ArrayNamespace

__all__ = [
    "BACKENDS",
    "Resolved",
    "array_namespace",
    "asarray",
    "available_backends",
    "backend_name",
    "device",
    "get_backend",
    "get_namespace",
    "is_lazy",
    "resolve",
    "scalar_like",
    "set_backend",
    "to_numpy",
    "use_backend",
]

#: Every backend xsoftmax knows, in the order they are reported.
BACKENDS: tuple[str, ...] = ("numpy", "cupy", "torch", "jax", "dask", "array_api_strict")

_default: contextvars.ContextVar[str] = contextvars.ContextVar("xsoftmax_backend", default="numpy")


def backend_name(xp: ArrayNamespace) -> str:
    """The xsoftmax name ("numpy", "cupy", ...) of an array namespace."""
    checks = (
        ("numpy", compat.is_numpy_namespace),
        ("cupy", compat.is_cupy_namespace),
        ("torch", compat.is_torch_namespace),
        ("jax", compat.is_jax_namespace),
        ("dask", compat.is_dask_namespace),
        ("array_api_strict", compat.is_array_api_strict_namespace),
    )
    for name, check in checks:
        if check(xp):
            return name
    return getattr(xp, "__name__", repr(xp))


def _describe(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def array_namespace(*arrays: Any, names: tuple[str, ...] | None = None) -> ArrayNamespace:
    """The one Array API namespace shared by ``arrays`` (``None`` entries skipped).

    Raises ``TypeError`` naming the offending argument when an input is not an
    array, and naming both namespaces when inputs come from two libraries.
    ``names`` gives the argument names used in those messages.
    """
    if names is None:
        names = tuple(f"argument {i}" for i in range(len(arrays)))
    first_xp: ArrayNamespace | None = None
    first_name = ""
    for name, arr in zip(names, arrays, strict=False):  # one name per array (callers)
        if arr is None:
            continue
        if not compat.is_array_api_obj(arr):
            raise TypeError(
                f"{name} must be an array (NumPy, CuPy, torch, JAX, Dask or "
                f"array-api-strict), got {_describe(arr)}; convert it with xsoftmax.asarray"
            )
        xp = compat.array_namespace(arr)
        if first_xp is None:
            first_xp, first_name = xp, name
        elif backend_name(xp) != backend_name(first_xp):
            raise TypeError(
                f"inputs come from two array namespaces: {first_name} is a "
                f"{backend_name(first_xp)} array but {name} is a {backend_name(xp)} array; "
                f"move one of them with xsoftmax.asarray(..., backend=...)"
            )
    if first_xp is None:
        raise TypeError("expected at least one array argument")
    return first_xp


class Resolved(NamedTuple):
    """What the checks and the engines need to know of a call's arrays, found once."""

    xp: ArrayNamespace
    backend: str  # backend_name(xp)


_NUMPY: Resolved | None = None


def resolve(*arrays: Any, names: tuple[str, ...]) -> Resolved:
    """Namespace and backend name of ``arrays`` (``None`` entries skipped).

    Plain NumPy arrays (the small-call case) take a shortcut: one type test
    each and a record made once. Anything else goes through
    :func:`array_namespace`, with its error messages.
    """
    global _NUMPY
    if all(a is None or type(a) is np.ndarray for a in arrays) and arrays[0] is not None:
        if _NUMPY is None:
            _NUMPY = Resolved(compat.array_namespace(arrays[0]), "numpy")
        return _NUMPY
    xp = array_namespace(*arrays, names=names)
    return Resolved(xp, backend_name(xp))


def device(x: Array) -> Any:
    """The device ``x`` lives on (array-api-compat's ``device``)."""
    return compat.device(x)


def scalar_like(xp: ArrayNamespace, value: float, like: Array) -> Array:
    """A 0-d array of ``like``'s dtype and device: a portable ``where`` operand."""
    return xp.asarray(value, dtype=like.dtype, device=compat.device(like))


def is_lazy(x: Array) -> bool:
    """True when ``x``'s values cannot be read without a compute (Dask, JAX tracers).

    array-api-compat calls every JAX array lazy; a concrete (non-traced) JAX
    array can be read, so only tracers count here, which lets eager JAX
    calls raise on a bad label like every other backend.
    """
    if compat.is_jax_array(x):
        import jax

        return isinstance(x, jax.core.Tracer)
    return bool(compat.is_lazy_array(x))


#: backend name -> module of its Array API namespace (array-api-compat's
#: wrappers where the library itself is not compliant).
_NAMESPACES: dict[str, str] = {
    "numpy": "array_api_compat.numpy",
    "cupy": "array_api_compat.cupy",
    "torch": "array_api_compat.torch",
    "jax": "jax.numpy",
    "dask": "array_api_compat.dask.array",
    "array_api_strict": "array_api_strict",
}


def _import_backend(name: str) -> ArrayNamespace:
    """Import backend ``name`` (a checked name) and return its Array API namespace."""
    return importlib.import_module(_NAMESPACES[name])


def _check_name(name: object) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


def get_namespace(name: str | None = None) -> ArrayNamespace:
    """The Array API namespace of backend ``name`` (default: the current backend)."""
    name = _check_name(get_backend() if name is None else name)
    try:
        return _import_backend(name)
    except ImportError as exc:
        raise ValueError(
            f"backend {name!r} is not available: {exc}; see xsoftmax.available_backends()"
        ) from exc


def _has_cuda_driver() -> bool:
    """Whether an NVIDIA driver (``libcuda``) can be loaded on this machine."""
    import ctypes
    import sys

    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for lib in names:
        try:
            ctypes.CDLL(lib)
        except OSError:
            continue
        return True
    return False


def cuda_error_reason(exc: BaseException) -> str:
    """What a CuPy/CUDA runtime error at start-up means, in words a user can act on.

    CUDA reports a machine with no NVIDIA driver at all as
    ``cudaErrorInsufficientDriver`` (the runtime finds no driver, so none is
    new enough), which reads as "update your driver" on a CPU-only machine.
    """
    text = f"{type(exc).__name__}: {exc}" if not str(exc).startswith("cuda") else str(exc)
    if "InsufficientDriver" in text or "insufficient for CUDA runtime" in text:
        if not _has_cuda_driver():
            return "no CUDA driver or device found (no NVIDIA driver is installed on this machine)"
        return (
            f"no CUDA device: the NVIDIA driver is older than CuPy's CUDA runtime ({text}); update "
            f"the driver or install the CuPy wheel for its CUDA major version (cupy-cuda12x)"
        )
    if "NoDevice" in text:
        return "no CUDA driver or device found (the NVIDIA driver sees no GPU)"
    return f"no CUDA device: {text}"


def _probe(name: str) -> str:
    """ "ok" if backend ``name`` works here, else the reason it does not."""
    try:
        _import_backend(name)
    except ImportError as exc:
        return f"not installed ({exc})"
    except Exception as exc:  # a broken install is reported, not raised
        return f"import failed: {type(exc).__name__}: {exc}"
    if name == "cupy":
        import cupy

        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError, driver missing, ...
            return cuda_error_reason(exc)
        if count < 1:
            return "no CUDA driver or device found (cudaGetDeviceCount returned 0)"
    return "ok"


def available_backends() -> dict[str, str]:
    """Every known backend mapped to "ok" or the reason it cannot be used here.

    Importing a backend to probe it is the point of this call, so unlike
    ``import xsoftmax`` it may import the optional libraries.
    """
    return {name: _probe(name) for name in BACKENDS}


def usable_namespace(name: str) -> ArrayNamespace:
    """The namespace of backend ``name`` if it works here, else ``ValueError`` with the reason.

    Stricter than :func:`get_namespace`: a GPU backend needs a usable device,
    not just an importable library, so the failure comes here, at once,
    rather than as a CUDA error from the first array.
    """
    xp = get_namespace(_check_name(name))  # not installed: get_namespace's message
    status = _probe(name)
    if status != "ok":
        raise ValueError(f"backend {name!r} is not usable here: {status}; see xsoftmax.available_backends()")
    return xp


def get_backend() -> str:
    """The current default backend's name (context-local)."""
    return _default.get()


def set_backend(name: str) -> None:
    """Set the default backend for new arrays in the current context.

    Raises ``ValueError`` with the reason :func:`available_backends` gives
    when the backend cannot be used here (not installed, no CUDA device).
    """
    usable_namespace(name)
    _default.set(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[ArrayNamespace]:
    """Temporarily make ``name`` the default backend; yields its namespace.

    Raises ``ValueError`` at once when the backend cannot be used here.
    """
    xp = usable_namespace(name)
    token = _default.set(name)
    try:
        yield xp
    finally:
        _default.reset(token)


def _resolve_dtype(xp: ArrayNamespace, dtype: Any) -> Any:
    if dtype is None or not isinstance(dtype, str):
        return dtype
    try:
        return getattr(xp, dtype)
    except AttributeError:
        if backend_name(xp) == "dask":
            # Dask arrays hold any NumPy dtype, but the Array API namespace
            # only names the standard's (no float16).
            try:
                return np.dtype(dtype)
            except TypeError:
                pass
        raise ValueError(
            f"dtype {dtype!r} is not a dtype of backend {backend_name(xp)!r}"
        ) from None


def to_numpy(x: Any) -> np.ndarray:
    """Copy ``x`` (any backend, any device) into a host NumPy array.

    Dask arrays are computed; bfloat16 is widened to float32, which NumPy
    lacks.
    """
    if isinstance(x, np.ndarray):
        return x
    if not compat.is_array_api_obj(x):
        return np.asarray(x)
    if compat.is_dask_array(x):
        return to_numpy(x.compute())
    if compat.is_cupy_array(x):
        return x.get()
    if compat.is_torch_array(x):
        import torch

        t = x.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):
        # array-api-strict deliberately has no __array__; DLPack is its exit.
        return np.from_dlpack(x)


def asarray(obj: Any, *, backend: str | None = None, dtype: Any = None) -> Array:
    """``obj`` as an array of ``backend`` (default: the current backend).

    Host data (lists, NumPy arrays) are copied onto the backend's default
    device; arrays from another backend go through host memory. ``dtype`` may
    be a dtype object of the target backend or its name ("float32").
    """
    xp = get_namespace(backend)
    dtype = _resolve_dtype(xp, dtype)
    if compat.is_array_api_obj(obj) and backend_name(compat.array_namespace(obj)) == backend_name(xp):
        return xp.asarray(obj, dtype=dtype) if dtype is not None else obj
    if compat.is_array_api_obj(obj):
        obj = to_numpy(obj)
    if backend_name(xp) == "dask":
        import dask.array as da

        host = np.asarray(obj)
        # Rows chunked, everything past the first axis whole: the layout the
        # Dask engine wants (a row's C classes in one chunk).
        # (Dask's auto-chunking divides by the row size: an empty array is one chunk.)
        chunks = ("auto",) + (-1,) * (host.ndim - 1) if host.ndim and host.size else -1
        return da.from_array(host, chunks=chunks).astype(dtype if dtype is not None else host.dtype)
    # copy=True: torch.asarray would otherwise share the host buffer, so that
    # writing to the new array would modify the caller's NumPy array.
    return xp.asarray(obj, dtype=dtype, copy=True)
