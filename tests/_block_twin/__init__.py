"""Block twin of the row-fused CUDA kernel: its own source, built by g++ on ``cuda_block.h``.

:class:`BlockTwinLauncher` stands in for the GPU launcher of
:func:`xsoftmax._engines.cupy.fused_row_softmax_loss`: it compiles
:data:`~xsoftmax._engines._cuda_source.ROW_SOURCE` (the very string the
engine hands to ``cupy.RawModule``) after ``cuda_block.h``, which gives each
CUDA thread of a block an OS thread, ``__syncthreads`` a real barrier and the
warp shuffles their lane semantics (see the header). One ``extern "C"``
wrapper per instantiation ``xsoftmax_row_loss<T, I>`` is appended, as
``RawModule``'s name expressions instantiate them on the GPU.

Not modelled: FMA contraction and CUDA's ``expf``/``logf`` ulps (the tests
allow the dtype's rounding), and warps running truly in lockstep (the twin's
warps only meet at shuffles and barriers, which is all the kernel may rely on).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
from typing import Any

import numpy as np

from xsoftmax._engines._cuda_source import ROW_LABEL_TYPES, ROW_SCORE_TYPES, ROW_SOURCE
from xsoftmax._engines.cupy import RowPlan

HEADER = os.path.join(os.path.dirname(__file__), "cuda_block.h")

#: The kernel's parameters after the launch configuration, as ctypes types.
_P, _LL, _I = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int
ARGTYPES = [ctypes.c_uint, ctypes.c_uint, ctypes.c_size_t,
            _P, _LL, _P, _LL, _LL, _P, _P, _P, _P, _I, _I, _P, _P, _P, _P, _LL]


class BlockTwinUnavailable(RuntimeError):
    """No C++20 compiler with ``<barrier>`` and ``_Float16`` here (the reason is the message)."""


def _tag(scores: str, labels: str) -> str:
    return f"{scores}_{labels}"


def source(kernel_source: str = ROW_SOURCE) -> str:
    """The translation unit: the header, the kernel text, one C wrapper per instantiation."""
    wrappers = []
    for scores, T in ROW_SCORE_TYPES.items():
        for labels, I_ in ROW_LABEL_TYPES.items():
            F = "double" if scores == "float64" else "float"
            wrappers.append(f"""
extern "C" void twin_row_{_tag(scores, labels)}(
    unsigned grid, unsigned threads, size_t shared, const void* s, long long s_stride,
    const void* y, long long n, long long c, const void* a, const void* cc, const void* b,
    const void* w, int smooth, int group, void* l, void* t, void* u, void* d, long long d_stride) {{
  twin::launch(grid, threads, shared, [=] {{
    xsoftmax_row_loss<{T}, {I_}>((const {T}*)s, s_stride, (const {I_}*)y, n, c, (const {F}*)a,
        (const {F}*)cc, (const {F}*)b, (const {F}*)w, smooth, group, ({F}*)l, ({F}*)t, ({F}*)u,
        ({T}*)d, d_stride);
  }});
}}""")
    return f'#include "{HEADER}"\n' + kernel_source + "\n".join(wrappers) + "\n"


@functools.cache
def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise BlockTwinUnavailable("no C++ compiler (g++) on PATH for the block twin")
    return cxx


_BUILT: dict[str, Any] = {}


def build(src: str, cache_dir: str) -> Any:
    """Compile ``src`` (cached by content) and return the loaded library."""
    key = hashlib.sha256((src + open(HEADER).read()).encode()).hexdigest()[:20]
    if key not in _BUILT:
        path = os.path.join(cache_dir, f"block_twin_{key}")
        if not os.path.exists(path + ".so"):
            with open(path + ".cpp", "w") as fh:
                fh.write(src)
            cmd = [compiler(), "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC",
                   path + ".cpp", "-o", path + ".so"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"g++ rejected the block twin {path}.cpp:\n{res.stderr[:4000]}")
        _BUILT[key] = ctypes.CDLL(path + ".so")
    return _BUILT[key]


class BlockTwinLauncher:
    """A :class:`~xsoftmax._engines.cupy.RowLauncher` running the block twin on NumPy buffers.

    ``kernel_source`` defaults to the engine's own; tests pass altered copies.
    ``plans`` records every launch.
    """

    def __init__(self, cache_dir: str, kernel_source: str = ROW_SOURCE):
        self.lib = build(source(kernel_source), cache_dir)
        self.plans: list[RowPlan] = []

    def __call__(self, plan: RowPlan, scores: str, labels: str, *args: Any) -> None:
        fn = getattr(self.lib, f"twin_row_{_tag(scores, labels)}")
        fn.restype = None
        fn.argtypes = ARGTYPES
        keep = []
        cargs: list[Any] = [plan.grid, plan.threads, plan.shared_bytes]
        for a in args:
            if isinstance(a, np.ndarray):
                keep.append(a)
                # A row-strided view: the kernel is handed the address of element [0, 0].
                cargs.append(a.__array_interface__["data"][0])
            else:
                cargs.append(int(a))
        fn(*cargs)
        self.plans.append(plan)
