"""Every CuPy kernel of the fused engine compiles with NVRTC for sm_80 and sm_90.

No CUDA device is needed: the source compiled is the one CuPy itself would
build and compile for a call of the engine's kernel objects, produced by
CuPy's own code generators (``_get_elementwise_kernel_code``,
``_ReductionKernel_get_cached_function_code``) with CuPy's compiler options
and header prologue, for float16 / float32 / float64 scores, int32 / int64
labels, and both the contiguous (32-bit index) and the strided (64-bit
index, > 2^31 elements) argument layouts. NVRTC compiles it to a cubin for
each architecture, so the device code generator (ptxas) runs too.

Those generators are CuPy internals; if a CuPy release renames them the
tests skip with that reason rather than test something else.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from xsoftmax._engines._cuda_source import GRAD, KERNELS, PREAMBLE, ElementwiseSpec

pytestmark = pytest.mark.nvrtc

cupy = pytest.importorskip("cupy", reason="cupy is not installed (pip install '.[nvrtc]')")

ARCHS = ("sm_80", "sm_90")
SCORE_DTYPES = ("float16", "float32", "float64")
#: (argument layout, label dtype): CuPy's two code paths for the same kernel.
LAYOUTS = (("contiguous", "int32"), ("strided", "int64"))


@pytest.fixture(scope="module")
def nvrtc():
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # ImportError, or the library is not loadable
        pytest.skip(
            f"NVRTC is not available ({type(exc).__name__}: {exc}); pip install nvidia-cuda-nvrtc"
        )
    return nvrtc


@pytest.fixture(scope="module")
def options(nvrtc):
    """CuPy's own NVRTC options (C++ standard, CCCL, CuPy and CUDA include dirs)."""
    from cupy._core import core

    try:
        opts = list(core.assemble_cupy_compiler_options(()))
    except AttributeError as exc:
        pytest.skip(f"this CuPy has no assemble_cupy_compiler_options: {exc}")
    except RuntimeError as exc:  # CuPy found no CUDA headers
        pytest.skip(f"CuPy cannot locate the CUDA headers: {exc}")
    dirs = [o[2:] for o in opts if o.startswith("-I")]
    if not any(os.path.exists(os.path.join(d, "cuda_fp16.h")) for d in dirs):
        pytest.skip(f"no cuda_fp16.h in CuPy's include path {dirs}: install the CUDA headers")
    return opts


def _generators():
    try:
        from cupy._core import _carray, _kernel, _reduction, _scalar, core

        return (
            _kernel._ArgInfo,
            _kernel._TypeMap,
            _kernel._get_elementwise_kernel_code,
            _reduction._ReductionKernel_get_cached_function_code,
            _reduction._decide_params_type,
            _scalar.CScalar,
            _carray.Indexer,
            core._cupy_header_list,
        )
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"CuPy's kernel code generators moved ({exc}); cannot rebuild its source")


# CuPy's _ArgKind enum (cupy/_core/_kernel.pxd).
NDARRAY, INDEXER, SCALAR = 1, 2, 3


def cupy_source(kernel, spec, scores: str, labels: str, layout: str) -> str:
    """The full CUDA source CuPy builds for ``kernel`` with these argument types."""
    (ArgInfo, TypeMap, elementwise_code, reduction_code, decide, CScalar, Indexer,
     headers) = _generators()
    compute = "float32" if scores == "float16" else scores
    # Probability targets (Q) of the scores' type, or float64 in the strided layout (a cast in-kernel).
    bind = {"T": scores, "I": labels, "F": compute, "Q": scores if layout == "contiguous" else "float64"}
    wide = layout == "strided"  # > 2^31 elements: non-contiguous views, 64-bit indexers
    ndim = 2 if wide else 1  # CuPy squashes all-contiguous operands to 1-D

    def dtype_of(p):
        return np.dtype(bind[p.ctype]).type if p.dtype is None else np.dtype(p.dtype).type

    def array(p, nd=None, contiguous=None):
        return ArgInfo(
            NDARRAY, cupy.ndarray, dtype_of(p),
            ndim if nd is None else nd,
            (not wide) if contiguous is None else contiguous,
            not wide,
        )

    if isinstance(spec, ElementwiseSpec):
        params = kernel.params[: kernel.nin + kernel.nout]
        _, _, type_map = kernel._decide_params_type(
            tuple(dtype_of(p) for p in params[: kernel.nin]),
            tuple(dtype_of(p) for p in params[kernel.nin:]),
        )
        infos = []
        for p in params:
            if p.raw:
                infos.append(array(p, nd=1, contiguous=True))  # the engine passes them contiguous
            elif p.dtype is not None:
                infos.append(ArgInfo(SCALAR, CScalar, dtype_of(p), 0, True, True))
            else:
                infos.append(array(p))
        infos.append(ArgInfo(INDEXER, Indexer, None, ndim, True, not wide))
        code = elementwise_code(
            tuple(infos), type_map, kernel.params, kernel.operation, kernel.name, kernel.preamble
        )
    else:
        _, _, type_map = decide(
            kernel.in_params, kernel.out_params,
            tuple(dtype_of(p) for p in kernel.in_params),
            tuple(dtype_of(p) for p in kernel.out_params),
        )
        type_map = TypeMap(type_map._pairs + (("IndexT", np.int64 if wide else np.int32),))
        # Inputs are broadcast (N, C) views with the reduced axis moved first.
        infos = [array(p, nd=2, contiguous=False) for p in kernel.in_params]
        infos += [array(p, nd=1, contiguous=True) for p in kernel.out_params]
        infos += [
            ArgInfo(INDEXER, Indexer, None, 2, True, not wide),
            ArgInfo(INDEXER, Indexer, None, 1, True, not wide),
            ArgInfo(SCALAR, CScalar, np.int32, 0, True, True),
        ]
        code = reduction_code(
            kernel.nin, kernel.nout, kernel._params, tuple(infos), type_map, kernel.name, 512,
            kernel.reduce_type, kernel.identity, kernel.map_expr, kernel.reduce_expr,
            kernel.post_map_expr, kernel.preamble, kernel.options,
        )
    return "".join(f"#include <{h}>\n" for h in headers) + code


def compile_cubin(nvrtc, src: str, name: str, options: list[str], arch: str) -> bytes:
    """NVRTC's cubin of ``src`` for ``arch``; an AssertionError with the log if rejected."""
    prog = nvrtc.createProgram(src, f"{name}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, options + [f"--gpu-architecture={arch}"])
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            raise AssertionError(f"NVRTC rejected {name} for {arch}: {exc}\n{log}") from None
        return nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)


@pytest.fixture(scope="module")
def engine_kernels():
    from xsoftmax._engines.cupy import kernels

    return kernels()


def test_nvrtc_engine_ships_exactly_the_spec_strings(engine_kernels):
    # The kernel objects the engine launches carry the specs' text verbatim,
    # so compiling their source compiles what the GPU would run.
    assert set(engine_kernels) == set(KERNELS)
    for key, spec in KERNELS.items():
        kernel = engine_kernels[key]
        assert kernel.name == spec.name and kernel.preamble == PREAMBLE
        if isinstance(spec, ElementwiseSpec):
            assert kernel.operation == spec.operation
        else:
            assert (kernel.map_expr, kernel.reduce_expr, kernel.post_map_expr) == (
                spec.map_expr, spec.reduce_expr, spec.post_map_expr,
            )
            assert (kernel.identity, kernel.reduce_type) == (spec.identity, spec.reduce_type)


#: The plain kernels in every (scores, layout) pair; the options' kernels (softcap ``_cap``,
#: probabilities ``prob``) in each score type once, the layouts alternating (compile time).
PLAIN_KEYS = ("grad", "lse", "smooth")
COMPILE_CASES = [
    (key, scores, layout, labels)
    for key in sorted(KERNELS)
    for scores in SCORE_DTYPES
    for layout, labels in LAYOUTS
    if key in PLAIN_KEYS or (layout == "strided") == (scores != "float32")
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("key,scores,layout,labels", COMPILE_CASES, ids=["-".join(c) for c in COMPILE_CASES])
def test_nvrtc_compiles_every_kernel(
    nvrtc, options, engine_kernels, key, scores, layout, labels, arch
):
    spec = KERNELS[key]
    src = cupy_source(engine_kernels[key], spec, scores, labels, layout)
    assert PREAMBLE in src and spec.name in src
    assert {"float16": "typedef float16 T;", "float32": "typedef float T;",
            "float64": "typedef double T;"}[scores] in src
    body = spec.operation if isinstance(spec, ElementwiseSpec) else spec.map_expr
    assert body in src
    if layout == "strided":
        assert "CIndexer<2, 0>" in src  # the 64-bit index variant
    cubin = compile_cubin(nvrtc, src, spec.name, options, arch)
    assert len(cubin) > 0


def test_nvrtc_rejects_a_broken_kernel(nvrtc, options):
    # The check has teeth: an operation naming an undefined variable must fail.
    from xsoftmax._engines.cupy import build_kernel

    broken = GRAD._replace(operation=GRAD.operation.replace("l[row]", "lse_undefined[row]"))
    assert broken.operation != GRAD.operation
    src = cupy_source(build_kernel(broken), broken, "float32", "int32", "contiguous")
    with pytest.raises(AssertionError, match="lse_undefined"):
        compile_cubin(nvrtc, src, broken.name, options, "sm_80")


# --- the row-fused kernel (engine "fused-row"): a RawModule of templates ---

from xsoftmax._engines._cuda_source import ROW_KERNEL_NAMES, ROW_SOURCE  # noqa: E402

PTXAS = "/usr/local/cuda/bin/ptxas"


def compile_row(nvrtc, options, arch: str, *, ptx: bool = False, source: str = ROW_SOURCE):
    """NVRTC output (cubin for ``sm_XX``, PTX for ``compute_XX``) of every row-kernel instantiation.

    Compiled with the engine's own ``row_options()`` plus the ``-ftz=true``
    CuPy adds to every RawModule (``options``, CuPy's, only gate the test on
    the CUDA headers being found).
    """
    from xsoftmax._engines.cupy import row_options

    options = [*row_options(), "-ftz=true"]
    prog = nvrtc.createProgram(source, "xsoftmax_row.cu", [], [])
    try:
        for name in ROW_KERNEL_NAMES:
            nvrtc.addNameExpression(prog, name)
        target = arch.replace("sm_", "compute_") if ptx else arch
        try:
            nvrtc.compileProgram(prog, options + [f"--gpu-architecture={target}"])
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            raise AssertionError(f"NVRTC rejected the row kernel for {arch}: {exc}\n{log}") from None
        lowered = [nvrtc.getLoweredName(prog, name) for name in ROW_KERNEL_NAMES]
        return (nvrtc.getPTX(prog) if ptx else nvrtc.getCUBIN(prog)), lowered
    finally:
        nvrtc.destroyProgram(prog)


def test_nvrtc_row_module_ships_the_row_source():
    from xsoftmax._engines.cupy import row_module, row_options

    module = row_module()
    assert module.code == ROW_SOURCE
    assert tuple(module.name_expressions) == ROW_KERNEL_NAMES
    assert module.options == row_options() and "--std=c++17" in module.options


@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_the_row_kernel(nvrtc, options, arch):
    cubin, lowered = compile_row(nvrtc, options, arch)
    assert len(cubin) > 0
    # Every dtype pair is instantiated: 4 score types x 2 label types for the plain kernel; the
    # options' kernel adds softcap on/off for labels and for probabilities (of the scores' type
    # or of float32 for 16-bit scores): 8 + 16 + 12.
    assert len(set(lowered)) == len(ROW_KERNEL_NAMES) == 36
    assert sum(name.startswith("_Z17xsoftmax_row_loss") for name in lowered) == 8
    assert sum(name.startswith("_Z19xsoftmax_row_loss_x") for name in lowered) == 28


def test_nvrtc_rejects_a_broken_row_kernel(nvrtc, options):
    broken = ROW_SOURCE.replace("acc[0] += xsoftmax_exp(x);", "acc[0] += xsoftmax_exp(undefined_x);")
    assert broken != ROW_SOURCE
    with pytest.raises(AssertionError, match="undefined_x"):
        compile_row(nvrtc, options, "sm_80", source=broken)


SPILL_ENTRY = (
    r"Compiling entry function '(\w+)' for 'sm_90'.*?"
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads.*?"
    r"Used (\d+) registers"
)


def ptxas_report(ptx: bytes, arch: str, tmp_path, *extra: str) -> tuple[str, str]:
    """``ptxas -v`` of ``ptx``: (its report, a note on any PTX version rewrite).

    The NVRTC wheel may be newer than the toolkit's ptxas; then ptxas names the
    newest PTX ISA it reads and the ``.version`` line is lowered to it (the
    kernel uses no instruction of a newer ISA, or ptxas fails below).
    """
    import re
    import subprocess

    path = tmp_path / f"row_{arch}.ptx"
    path.write_bytes(ptx)
    cmd = [PTXAS, "-v", *extra, f"-arch={arch}", str(path), "-o", str(tmp_path / f"row_{arch}.cubin")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    note = ""
    skew = re.search(r"Unsupported \.version (\d+\.\d+); current version is '(\d+\.\d+)'", res.stderr)
    if res.returncode and skew:
        text = ptx.decode()
        path.write_text(re.sub(r"^\.version \S+", f".version {skew[2]}", text, count=1, flags=re.M))
        note = f"PTX .version {skew[1]} (NVRTC) lowered to {skew[2]} (ptxas); "
        res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"ptxas failed:\n{res.stderr[-3000:]}"
    return res.stdout + res.stderr, note


def test_nvrtc_row_kernel_has_no_spill_on_sm_90(nvrtc, options, tmp_path, record_property):
    import re

    if not os.path.exists(PTXAS):
        pytest.fail(f"{PTXAS} is missing: the spill check needs the CUDA toolkit's ptxas")
    ptx, lowered = compile_row(nvrtc, options, "sm_90", ptx=True)
    report, note = ptxas_report(ptx, "sm_90", tmp_path)
    entries = re.findall(SPILL_ENTRY, report, flags=re.S)
    assert sorted(e[0] for e in entries) == sorted(lowered), report
    names = dict(zip(lowered, ROW_KERNEL_NAMES, strict=True))
    lines = [f"{names[e[0]]}: {e[4]} registers/thread, stack {e[1]} B, spill {e[2]}/{e[3]} B"
             for e in entries]
    print(f"ptxas -v sm_90 ({note}{PTXAS}):\n  " + "\n  ".join(lines))
    record_property("registers_per_thread_sm_90", {names[e[0]]: int(e[4]) for e in entries})
    assert all(e[2] == "0" and e[3] == "0" for e in entries), "\n".join(lines)
    # float32 and 16-bit rows run 1024-thread blocks: at most 64 registers a
    # thread (65536 per SM). float64 may need more; the engine then caps its
    # blocks by the kernel's own max_threads_per_block.
    # The same check with NVRTC's own ptxas (no version skew): its cubin log.
    prog = nvrtc.createProgram(ROW_SOURCE, "xsoftmax_row.cu", [], [])
    try:
        for name in ROW_KERNEL_NAMES:
            nvrtc.addNameExpression(prog, name)
        nvrtc.compileProgram(prog, options + ["--gpu-architecture=sm_90", "--ptxas-options=-v"])
        log = nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) == len(ROW_KERNEL_NAMES) and all(s == ("0", "0") for s in spills), log
    regs = {names[e[0]]: int(e[4]) for e in entries}
    assert all(r <= 64 for name, r in regs.items() if "double" not in name), "\n".join(lines)


def test_nvrtc_spill_check_sees_a_spill(nvrtc, options, tmp_path):
    # The parse has teeth: squeezed to 16 registers, the same PTX must spill.
    import re

    ptx, _ = compile_row(nvrtc, options, "sm_90", ptx=True)
    report, _ = ptxas_report(ptx, "sm_90", tmp_path, "--maxrregcount=16")
    entries = re.findall(SPILL_ENTRY, report, flags=re.S)
    assert len(entries) == len(ROW_KERNEL_NAMES)
    assert any(int(e[2]) > 0 and int(e[3]) > 0 for e in entries), report
