"""Which path ``softmax_loss`` takes for another framework's arrays, and the zero-copy views it uses.

The decision is one small pure function, :func:`choose_path`, of facts read
from the inputs' metadata (:func:`inspect_scores`), so that every backend and
device kind can be tested without that device (a CUDA tensor without a GPU is
a :class:`Facts` with ``device_type="cuda"``):

=========================  ==========================  ======================
backend                    facts                       path
=========================  ==========================  ======================
numpy, cupy, dask, strict  any                         ``native`` (their engines)
torch                      requires grad               ``torch-autograd``
torch                      CPU                         ``numpy-views``
torch                      CUDA, CuPy importable       ``cupy-dlpack``
torch                      other devices (mps, meta)   ``reference``
jax                        traced (under jit / grad)   ``reference``
jax                        concrete, CPU               ``numpy-views``
jax                        concrete, GPU / TPU         ``reference`` (XLA)
=========================  ==========================  ======================

Only ``engine="auto"`` is routed; ``"reference"`` and ``"fused"`` keep their
meaning. Nothing here imports torch, JAX or CuPy unless the caller's arrays
already come from them (array-api-compat's ``is_*_array`` checks do not import).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any, NamedTuple

import array_api_compat as compat
import numpy as np

from ._typing import Array

__all__ = [
    "CUPY_DLPACK",
    "NATIVE",
    "NUMPY_VIEWS",
    "PATHS",
    "REFERENCE",
    "TORCH_AUTOGRAD",
    "Facts",
    "choose_path",
    "from_numpy_like",
    "inspect_scores",
    "numpy_view",
]

NATIVE = "native"
NUMPY_VIEWS = "numpy-views"
CUPY_DLPACK = "cupy-dlpack"
TORCH_AUTOGRAD = "torch-autograd"
REFERENCE = "reference"
PATHS = (NATIVE, NUMPY_VIEWS, CUPY_DLPACK, TORCH_AUTOGRAD, REFERENCE)


class Facts(NamedTuple):
    """What the routing decision reads from the scores (metadata only)."""

    backend: str  # "numpy", "torch", "jax", ...
    device_type: str  # "cpu", "cuda", "gpu", "mps", "meta", ...
    traced: bool = False  # a JAX tracer (values unknown until run)
    requires_grad: bool = False  # a torch tensor autograd records
    cupy_available: bool = False  # CuPy can be imported (for CUDA tensors)


def choose_path(facts: Facts) -> str:
    """The path (one of :data:`PATHS`) for scores described by ``facts`` under ``engine="auto"``."""
    if facts.backend == "torch":
        if facts.requires_grad:
            return TORCH_AUTOGRAD
        if facts.device_type == "cpu":
            return NUMPY_VIEWS
        if facts.device_type == "cuda" and facts.cupy_available:
            return CUPY_DLPACK
        return REFERENCE
    if facts.backend == "jax":
        if not facts.traced and facts.device_type == "cpu":
            return NUMPY_VIEWS
        return REFERENCE
    return NATIVE


def cupy_available() -> bool:
    """CuPy is installed (found without importing it: only CUDA tensors need it)."""
    return importlib.util.find_spec("cupy") is not None


def device_type(x: Array) -> str:
    """The device kind of a torch tensor or JAX array: "cpu", "cuda", "gpu", ..."""
    if compat.is_torch_array(x):
        return str(x.device.type)
    devices = getattr(x, "devices", None)
    if callable(devices):
        try:
            return str(next(iter(devices())).platform)
        except Exception:  # a tracer has no devices: it is not routed by device anyway
            return "unknown"
    return "cpu"


def inspect_scores(scores: Any, *, grad_enabled: bool | None = None) -> Facts:
    """The :class:`Facts` of ``scores``; ``grad_enabled`` defaults to torch's grad mode."""
    if compat.is_torch_array(scores):
        if grad_enabled is None:
            import torch

            grad_enabled = torch.is_grad_enabled()
        kind = device_type(scores)
        return Facts(
            "torch",
            kind,
            requires_grad=bool(scores.requires_grad and grad_enabled),
            cupy_available=kind == "cuda" and cupy_available(),
        )
    if compat.is_jax_array(scores):
        import jax

        traced = isinstance(scores, jax.core.Tracer)
        return Facts("jax", "unknown" if traced else device_type(scores), traced=traced)
    return Facts("other", "cpu")


def numpy_view(x: Any) -> np.ndarray:
    """A zero-copy NumPy view of a CPU torch tensor or concrete CPU JAX array.

    bfloat16, which NumPy lacks, is widened to a float32 copy (the engines
    compute it in float32 anyway). A JAX view is read-only.
    """
    if compat.is_torch_array(x):
        import torch

        t = x.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    a = np.asarray(x)
    if a.dtype.kind == "V" or a.dtype.name == "bfloat16":  # JAX's bfloat16 is ml_dtypes', not NumPy's
        a = a.astype(np.float32)
    return a


def from_numpy_like(a: np.ndarray, like: Any) -> Any:
    """``a`` as an array of ``like``'s framework and dtype, sharing memory where the dtype allows."""
    if compat.is_torch_array(like):
        import torch

        t = torch.from_numpy(np.asarray(a))
        return t if t.dtype == like.dtype else t.to(like.dtype)
    import jax.numpy as jnp

    return jnp.asarray(a, dtype=like.dtype)


def _torch_to_cupy(t: Any) -> Any:
    """A CUDA tensor as a CuPy array through DLPack (no copy; bfloat16 widened first: CuPy lacks it)."""
    import cupy
    import torch

    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return cupy.from_dlpack(t)


def run_path(
    path: str, scores: Any, y: Any, *, weight: Any, out: Any, **options: Any
) -> tuple[Any, Any] | None:
    """``softmax_loss`` of torch / JAX inputs along ``path``; None for :data:`NATIVE` / :data:`REFERENCE`.

    ``options`` are ``softmax_loss``'s (reduction, ignore_index,
    label_smoothing). The NumPy and CuPy paths call ``softmax_loss`` again on
    the views, so their validation and messages are the library's own, and
    hand back ``(loss, dscores)`` in the caller's framework and dtype.
    """
    from ._dispatch import dispatch_softmax_loss as softmax_loss

    if path == NUMPY_VIEWS:
        if out is not None and not compat.is_torch_array(out):
            return None  # JAX out=: the native check gives its TypeError
        to_np: Callable[[Any], Any] = numpy_view
    elif path == CUPY_DLPACK:
        to_np = _torch_to_cupy
    else:
        return None
    views = [None if a is None else to_np(a) for a in (scores, y, weight)]
    out_view = None
    if out is not None:
        out_view = to_np(out)
        if out.dtype != out_view.dtype or not compat.is_torch_array(out):
            return None  # bfloat16 out= has no view to write into: the reference writes it
    loss, d = softmax_loss(views[0], views[1], weight=views[2], out=out_view, **options)
    if path == CUPY_DLPACK:
        import torch

        loss, d = torch.from_dlpack(loss).to(scores.dtype), torch.from_dlpack(d).to(scores.dtype)
        return loss, (out if out is not None else d)
    return from_numpy_like(loss, scores), (out if out is not None else from_numpy_like(d, scores))


def _alike(scores: Any, others: tuple[Any, ...]) -> bool:
    """Every other input is of the scores' framework, on the same device and not traced.

    Otherwise the route is not taken and the library's own checks raise
    their ``TypeError`` (two namespaces) or ``ValueError`` (two devices).
    """
    torch_scores = compat.is_torch_array(scores)
    for a in others:
        if a is None:
            continue
        if torch_scores:
            if not compat.is_torch_array(a) or a.device != scores.device:
                return False
        elif not compat.is_jax_array(a) or inspect_scores(a) != inspect_scores(scores):
            return False
    return True


def route(scores: Any, y: Any, weight: Any = None, out: Any = None) -> str | None:
    """The path ``softmax_loss(engine="auto")`` takes for torch / JAX inputs; None for other arrays.

    ``softmax_loss`` runs :data:`TORCH_AUTOGRAD` itself (the adapter module
    imports this one) and the other paths with :func:`run_path`.
    """
    if not (compat.is_torch_array(scores) or compat.is_jax_array(scores)):
        return None
    if not _alike(scores, (y, weight, out)):
        return None
    return choose_path(inspect_scores(scores))
