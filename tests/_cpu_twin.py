"""CPU twin of the CuPy kernels: their own strings, built by g++, run on NumPy.

A kernel spec of :mod:`xsoftmax._engines._cuda_source` (the text the CuPy
engine compiles) is pasted into a C++ translation unit that mimics what CuPy
generates around it: the type placeholders (``T``, ``I``, ``F``) become
``typedef`` s of the argument dtypes, elementwise parameters are read through
their strides, raw parameters are flat pointers, the ``REDUCE`` / ``POST_MAP``
macros wrap a reduction's expressions, and a ReductionKernel's thread
partials are emulated by ``partials`` interleaved accumulators combined in
CuPy's shared-memory tree order (so the merge of two partial states, and of
the identity, really runs). The CUDA-only spellings are supplied here:
``__device__`` / ``__forceinline__`` expand to nothing, ``__int_as_float`` is a
bit copy, and CuPy's ``float16`` is g++'s ``_Float16`` (IEEE binary16, rounded
to nearest even like ``__float2half_rn``).

:class:`TwinLauncher` runs a spec the way a CuPy kernel call would (inputs
broadcast, outputs written in place), so it can stand in for the GPU launcher
of :func:`xsoftmax._engines.cupy.fused_softmax_loss`.

Not modelled, and the reason the comparisons allow a few units of rounding:
nvcc/NVRTC contract ``a * b + c`` into an FMA by default, CUDA's ``exp`` /
``log`` may differ from glibc's by an ulp or two, and a GPU block sums
hundreds of partials where the twin uses ``partials`` of them.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from typing import Any, NamedTuple

import numpy as np

from xsoftmax._engines._cuda_source import KERNELS, PREAMBLE, ElementwiseSpec, ReductionSpec

#: CuPy's C name of each dtype (``cupy._core._scalar.get_typename``).
C_TYPES = {
    "bool": "bool",
    "int8": "signed char",
    "uint8": "unsigned char",
    "int16": "short",
    "uint16": "unsigned short",
    "int32": "int",
    "uint32": "unsigned int",
    "int64": "long long",
    "uint64": "unsigned long long",
    "float16": "float16",
    "float32": "float",
    "float64": "double",
}

PRELUDE = r"""
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <vector>
#define __device__
#define __forceinline__ inline
typedef _Float16 float16;
static inline float __int_as_float(int x) { float f; memcpy(&f, &x, sizeof f); return f; }
"""

SIGNATURE = (
    'extern "C" void xsoftmax_twin(void* const* _args, const ptrdiff_t* _st, '
    "ptrdiff_t _rows, ptrdiff_t _cols, int _partials)"
)


class TwinUnavailable(RuntimeError):
    """The CPU twin cannot be built on this machine (the reason is the message)."""


class Param(NamedTuple):
    name: str
    type: str  # a placeholder letter or a dtype name
    raw: bool

    @property
    def placeholder(self) -> bool:
        return len(self.type) == 1


def parse_params(params: str) -> list[Param]:
    """``"T s, raw I y, int64 k"`` -> [Param("s", "T", False), ...] (CuPy's syntax)."""
    out = []
    for item in params.split(","):
        words = item.split()
        *flags, typ, name = words
        if set(flags) - {"raw"}:
            raise ValueError(f"unknown keyword in parameter {item!r}")
        out.append(Param(name, typ, "raw" in flags))
    return out


@functools.cache
def compiler() -> str:
    """Path of g++ after checking it has ``_Float16``; else TwinUnavailable."""
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise TwinUnavailable("no C++ compiler (g++) on PATH for the CPU twin")
    probe = "_Float16 h = (_Float16)1.5f; float f = h;\nint main() { return f != 1.5f; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as fh:
            fh.write(probe)
        res = subprocess.run([cxx, "-std=c++17", src, "-o", os.path.join(tmp, "probe")],
                             capture_output=True, text=True)
    if res.returncode:
        raise TwinUnavailable(
            f"{cxx} has no _Float16 (needed for float16 twins): {res.stderr[:300]}"
        )
    return cxx


def source(spec: ElementwiseSpec | ReductionSpec, preamble: str, types: dict[str, str]) -> str:
    """The C++ twin of ``spec`` for placeholder ``types`` ({"T": "float16", ...})."""
    ins, outs = parse_params(spec.in_params), parse_params(spec.out_params)
    ctype = lambda p: p.type if p.placeholder else C_TYPES[p.type]  # noqa: E731
    typedefs = "".join(f"typedef {C_TYPES[types[k]]} {k};\n" for k in sorted(types))
    decls, body = [], []
    strided = 0  # index of the next (stride0, stride1) pair in _st
    for j, p in enumerate(ins + outs):
        is_in = j < len(ins)
        const = "const " if is_in else ""
        if p.raw:
            decls.append(f"{const}{ctype(p)}* {p.name} = ({const}{ctype(p)}*)_args[{j}];")
        elif p.name in _scalars(spec):
            decls.append(f"const {ctype(p)} {p.name} = *(const {ctype(p)}*)_args[{j}];")
        else:
            decls.append(f"{const}{ctype(p)}* _raw_{p.name} = ({const}{ctype(p)}*)_args[{j}];")
    if isinstance(spec, ElementwiseSpec):
        for p in ins + outs:
            if p.raw or p.name in _scalars(spec):
                continue
            ref = "const " if p in ins else ""
            body.append(
                f"{ref}{ctype(p)} &{p.name} = "
                f"_raw_{p.name}[_r * _st[{2 * strided}] + _c * _st[{2 * strided + 1}]];"
            )
            strided += 1
        kernel = f"""
{SIGNATURE} {{
  {chr(10).join(decls)}
  for (ptrdiff_t i = 0; i < _rows * _cols; ++i) {{
    const ptrdiff_t _r = i / _cols, _c = i % _cols;
    {chr(10).join(body)}
    {spec.operation};
  }}
}}
"""
    else:
        loads = []
        for p in ins:
            loads.append(
                f"const {ctype(p)} {p.name} = "
                f"_raw_{p.name}[_i * _st[{2 * strided}] + _j * _st[{2 * strided + 1}]];"
            )
            strided += 1
        stores = [f"{ctype(p)} &{p.name} = _raw_{p.name}[_i];" for p in outs]
        kernel = f"""
#define REDUCE(a, b) ({spec.reduce_expr})
#define POST_MAP(a) ({spec.post_map_expr})
typedef {spec.reduce_type} _type_reduce;
{SIGNATURE} {{
  {chr(10).join(decls)}
  std::vector<_type_reduce> _acc(_partials, _type_reduce({spec.identity}));
  for (ptrdiff_t _i = 0; _i < _rows; ++_i) {{
    for (int _p = 0; _p < _partials; ++_p) _acc[_p] = _type_reduce({spec.identity});
    for (ptrdiff_t _j = 0; _j < _cols; ++_j) {{
      {chr(10).join(loads)}
      _type_reduce _a = static_cast<_type_reduce>({spec.map_expr});
      _acc[_j % _partials] = REDUCE(_acc[_j % _partials], _a);
    }}
    // CuPy's block tree: _sdata[tid] = REDUCE(_sdata[tid], _sdata[tid + b]).
    for (int _b = _partials / 2; _b >= 1; _b >>= 1)
      for (int _p = 0; _p < _b; ++_p) _acc[_p] = REDUCE(_acc[_p], _acc[_p + _b]);
    {chr(10).join(stores)}
    POST_MAP(_acc[0]);
  }}
}}
"""
    return PRELUDE + typedefs + preamble + kernel


def _scalars(spec: ElementwiseSpec | ReductionSpec) -> set[str]:
    """Names of scalar parameters: typed (not placeholder), not raw, elementwise only."""
    if not isinstance(spec, ElementwiseSpec):
        return set()
    return {p.name for p in parse_params(spec.in_params) if not p.placeholder and not p.raw}


#: content hash -> (function, library); the library is kept so it stays loaded.
_BUILT: dict[str, tuple[Any, Any]] = {}


def build(src: str, cache_dir: str) -> Any:
    """Compile ``src`` to a shared library (cached by content) and return its function."""
    key = hashlib.sha256(src.encode()).hexdigest()[:20]
    if key not in _BUILT:
        cxx = compiler()
        path = os.path.join(cache_dir, f"twin_{key}")
        if not os.path.exists(path + ".so"):
            with open(path + ".cpp", "w") as fh:
                fh.write(src)
            cmd = [cxx, "-std=c++17", "-O1", "-shared", "-fPIC", path + ".cpp", "-o", path + ".so"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"g++ rejected the twin source {path}.cpp:\n{res.stderr[:4000]}")
        lib = ctypes.CDLL(path + ".so")
        fn = lib.xsoftmax_twin
        fn.restype = None
        fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_ssize_t),
                       ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_int]
        _BUILT[key] = (fn, lib)
    return _BUILT[key][0]


class TwinLauncher:
    """A launcher for ``fused_softmax_loss`` that runs the kernels' twins on NumPy.

    ``specs`` / ``preamble`` default to the engine's own; tests pass altered
    copies to show that a change in the kernel text changes the result.
    """

    def __init__(
        self, cache_dir: str, *, partials: int = 4, specs=None, preamble: str | None = None
    ):
        if partials & (partials - 1):
            raise ValueError("partials must be a power of two, like a CUDA block")
        self.cache_dir = cache_dir
        self.partials = partials
        self.specs = dict(KERNELS if specs is None else specs)
        self.preamble = PREAMBLE if preamble is None else preamble
        self.calls: list[str] = []

    def __call__(self, key: str, *args: Any) -> None:
        spec = self.specs[key]
        ins, outs = parse_params(spec.in_params), parse_params(spec.out_params)
        assert len(args) == len(ins) + len(outs), f"{spec.name}: {len(args)} arguments"
        params = ins + outs
        out_arrays = [np.asarray(a) for a in args[len(ins):]]
        shape = out_arrays[0].shape
        if isinstance(spec, ReductionSpec):
            rows = shape[0]
            cols = np.broadcast_shapes(*[np.shape(a) for a in args[: len(ins)]])[1]
            loop_shape = (rows, cols)
        else:
            rows, cols = shape
            loop_shape = shape

        types: dict[str, str] = {}
        ptrs, strides, keep = [], [], []
        scalars = _scalars(spec)
        for p, a in zip(params, args, strict=True):
            if p.name in scalars:
                value = np.asarray(a, dtype=p.type)
                keep.append(value)
                ptrs.append(value.ctypes.data)
                continue
            arr = np.asarray(a)
            want = arr.dtype.name
            if p.placeholder:
                # CuPy binds each placeholder to one dtype and rejects a mismatch.
                assert types.setdefault(p.type, want) == want, (
                    f"{spec.name}: {p.name} is {want} but {p.type} is {types[p.type]}"
                )
            else:
                assert want == p.type, f"{spec.name}: {p.name} must be {p.type}, got {want}"
            if p.raw:
                arr = np.ascontiguousarray(arr)  # as the GPU launcher hands raw vectors over
            elif p in outs and isinstance(spec, ReductionSpec):
                assert arr.flags.c_contiguous and arr.shape == (rows,)
            elif p in ins:
                arr = np.broadcast_to(arr, loop_shape)
                strides += [s // arr.itemsize for s in arr.strides]
            else:
                assert arr.shape == loop_shape
                strides += [s // arr.itemsize for s in arr.strides]
            keep.append(arr)
            ptrs.append(arr.ctypes.data)

        fn = build(source(spec, self.preamble, types), self.cache_dir)
        argv = (ctypes.c_void_p * len(ptrs))(*ptrs)
        st = (ctypes.c_ssize_t * max(1, len(strides)))(*strides)
        fn(argv, st, rows, cols, self.partials)
        self.calls.append(key)
