"""Block twin of the row-fused CUDA kernel: its own source, built by g++ on ``cuda_block.h``.

:class:`BlockTwinLauncher` stands in for the GPU launcher of
:func:`xsoftmax._engines.cupy.fused_row_softmax_loss`: it compiles
:data:`~xsoftmax._engines._cuda_source.ROW_SOURCE` (the very string the
engine hands to ``cupy.RawModule``) after ``cuda_block.h``, which gives each
CUDA thread of a block an OS thread, ``__syncthreads`` a real barrier and the
warp shuffles their lane semantics (see the header). One ``extern "C"``
wrapper per name expression of ``ROW_KERNEL_NAMES`` is appended, as
``RawModule``'s name expressions instantiate them on the GPU; it takes the
arguments as CUDA's ``kernelParams`` (pointers to each value) and checks
their count and sizes against the kernel's own parameter list.

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

from xsoftmax._engines._cuda_source import ROW_KERNEL_NAMES, ROW_SOURCE
from xsoftmax._engines.cupy import RowPlan

HEADER = os.path.join(os.path.dirname(__file__), "cuda_block.h")

#: ctypes type of each typed scalar the driver passes (as a CUDA launch takes them).
SCALARS = {
    np.dtype(np.int32): ctypes.c_int, np.dtype(np.int64): ctypes.c_longlong,
    np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
}

#: Calls a kernel from an array of pointers to its arguments (CUDA's ``kernelParams``), after
#: checking their count and sizes against the kernel's own parameter list.
INVOKE = r"""
#include <cstddef>
#include <type_traits>
#include <utility>
namespace twin {
template <typename... A, std::size_t... J>
void invoke_at(void (*k)(A...), void* const* a, std::index_sequence<J...>) {
  k(*(std::remove_cv_t<std::remove_reference_t<A>>*)a[J]...);
}
template <typename... A>
int invoke(unsigned grid, unsigned threads, std::size_t shared, void (*k)(A...), void* const* a,
           const std::size_t* sizes, int count) {
  const std::size_t expected[] = {sizeof(A)...};
  if (count != (int)sizeof...(A)) return -1;
  for (int j = 0; j < count; ++j)
    if (sizes[j] != expected[j]) return j + 1;
  launch(grid, threads, shared, [=] { invoke_at(k, a, std::index_sequence_for<A...>{}); });
  return 0;
}
}  // namespace twin
"""


class BlockTwinUnavailable(RuntimeError):
    """No C++20 compiler with ``<barrier>`` and ``_Float16`` here (the reason is the message)."""


def symbol(name: str) -> str:
    """The C wrapper's name for a kernel name expression (``xsoftmax_row_loss<float, int>``)."""
    return "twin_" + "".join(ch if ch.isalnum() else "_" for ch in name)


def source(kernel_source: str = ROW_SOURCE) -> str:
    """The translation unit: the header, the kernel text, one C wrapper per instantiation."""
    wrappers = [
        f"""
extern "C" int {symbol(name)}(unsigned grid, unsigned threads, size_t shared, void* const* a,
                          const size_t* sizes, int count) {{
  return twin::invoke(grid, threads, shared, &{name}, a, sizes, count);
}}"""
        for name in ROW_KERNEL_NAMES
    ]
    return f'#include "{HEADER}"\n' + INVOKE + kernel_source + "\n".join(wrappers) + "\n"


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
        self.names: list[str] = []

    def __call__(self, plan: RowPlan, name: str, *args: Any) -> None:
        fn = getattr(self.lib, symbol(name))
        fn.restype = ctypes.c_int
        keep, sizes = [], []
        for a in args:
            if isinstance(a, np.ndarray):
                # A row-strided view: the kernel is handed the address of element [0, 0].
                value: Any = ctypes.c_void_p(a.__array_interface__["data"][0])
            else:
                assert isinstance(a, np.generic), f"{name}: untyped scalar argument {a!r}"
                value = SCALARS[a.dtype](a.item())
            keep.append(value)
            sizes.append(ctypes.sizeof(value))
        ptrs = (ctypes.c_void_p * len(keep))(*[ctypes.addressof(v) for v in keep])
        size_arr = (ctypes.c_size_t * len(keep))(*sizes)
        err = fn(plan.grid, plan.threads, plan.shared_bytes, ptrs, size_arr, len(keep))
        assert err == 0, f"{name}: {len(keep)} arguments, mismatch at {err} (-1: count)"
        self.plans.append(plan)
        self.names.append(name)
