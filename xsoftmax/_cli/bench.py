r"""``xsoftmax bench``: ``softmax_loss`` forward+backward on every backend and engine, side by side.

For each backend × engine (and the peers: PyTorch ``F.cross_entropy``
forward+backward, JAX ``jit(value_and_grad)``, a naive CS231n-style NumPy
loss) × shape × dtype, one row reports

* ``median_ms`` and ``spread_ms`` (interquartile range) over ``--repeat``
  timed calls after a warm-up call;
* ``gbps``: bytes of scores read plus gradient written, ``2·N·C·itemsize``,
  over the median time;
* ``floor_ratio``: the median over the median of a plain copy of the same
  ``N×C`` bytes on the same device, measured in the same run
  (``np.copyto`` on the host, a CuPy copy on the GPU, a copy on the Dask
  workers). The copy moves exactly the bytes a pass must move, so 1.0 is the
  memory floor and 3.0 means "three copies' worth of time";
* ``max_abs_err``: the largest difference of the loss and of the gradient
  from a float64 NumPy oracle (:func:`xsoftmax._cli.check.oracle_softmax_loss`);
* ``peak_bytes``: peak extra memory of one call (tracemalloc on the host,
  the CuPy pool on the GPU; ``null`` where neither sees the allocations:
  torch, JAX, the Dask workers).

``--case`` adds rows for issue 15's options beside the plain labels case
(:data:`CASES`): ``probs`` (class-probability targets of the scores'
shape; they are read but not counted in ``gbps``/``floor_ratio``, which
count the scores read and gradient written), ``zloss-softcap``
(``z_loss=1e-4, softcap=30``) and ``kdim`` (the same rows as an
``(N/8, C, 8)`` K-dimensional batch, class axis 1). Each row's engine reads
``engine[case]``; its time against the plain row of the same engine is the
cost of the option. Peers run the plain case only.

Engine ``fused-out`` (``--engines``, not run by default) is the fused
engine writing into one ``out=`` buffer made before the timing, as a caller
that reuses its gradient buffer runs it: its rows show the time without the
allocation (on the host, the kernel zeroing the new output's pages).

The same :func:`make_case`, :func:`make_peer` and :func:`floor` drive the
``bench/`` pytest-benchmark suite, and all timing lives in
:mod:`xsoftmax._cli.timing`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from .._typing import Engine
from .._validate import check_positive_int
from . import plotting, timing
from .check import enable_jax_float64, engines_for, oracle_softmax_loss
from .text import choice_list, comma_list, format_table

__all__ = [
    "DEFAULT_SHAPES",
    "PEERS",
    "Case",
    "configure",
    "dask_client",
    "floor",
    "gather_blocks",
    "machine_info",
    "make_case",
    "make_peer",
    "max_abs_err",
    "naive_softmax_loss",
    "parse_peers",
    "parse_shape",
    "parse_shapes",
    "plan",
    "print_table",
    "run",
]

#: Default shapes: a classifier-sized batch (N ≫ C) and a vocabulary-sized
#: one (C ≫ N), 8 M and 16 M values (32 and 64 MB in float32): far larger
#: than per-core caches, small enough that the default run (14 rows with the
#: peers) finishes in about a minute on a busy 2-core CPU.
DEFAULT_SHAPES: tuple[tuple[int, int], ...] = ((8192, 1024), (512, 32000))

#: peer name -> (library it needs, engine label in the table)
PEERS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "peer:F.cross_entropy"),
    "xsoftmax.torch": ("torch", "torch:xsoftmax.torch"),  # the adapters, beside their framework's own
    "jax": ("jax", "peer:jit(value_and_grad)"),
    "xsoftmax.jax": ("jax", "jax:xsoftmax.jax"),
    "naive": ("numpy", "peer:naive CS231n"),
}

#: Backends left out of the default run, and why.
NOT_BY_DEFAULT = {
    "dask": "a cluster backend: on one machine its rows mostly time the scheduler, and starting "
            "a LocalCluster costs seconds (ask with --backends dask)",
    "array_api_strict": "a conformance namespace, not a performance backend (ask with --backends)",
}

DTYPES = ("float32", "float64", "float16", "bfloat16")

#: ``--case`` names: the plain labels case and issue 15's options (module docstring).
CASES = ("plain", "probs", "zloss-softcap", "kdim")
#: K-dim rows: positions per sample (N must be a multiple).
KDIM_POSITIONS = 8

#: Dtypes NumPy has no name for: their rows are made by :func:`_bfloat16_case`
#: (torch only; CuPy has no bfloat16 arrays) and their floor copies the same
#: bytes as float16.
NO_NUMPY_DTYPE = {"bfloat16": "float16"}

#: Backends whose fused engine is also timed with a reused ``out=`` buffer
#: (engine ``fused-out``, on request).
OUT_BUFFER_BACKENDS = ("numpy", "cupy")

#: Dask rows run on a LocalCluster of this many single-threaded worker processes.
DASK_WORKERS = 2


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One thing to time: a forward+backward pass of one implementation on one input."""

    backend: str
    engine: str
    kind: str  # "xsoftmax" or "peer"
    device: str  # where its copy floor is measured: "cpu", "cuda" or "dask"
    #: one forward+backward pass; returns (loss, dscores) once the work is
    #: done (on "cuda": once it is enqueued; CUDA events time it)
    fn: Callable[[], tuple[Any, Any]]
    #: the scores it computes on, as host float64, and the labels (for the oracle)
    inputs: Callable[[], tuple[np.ndarray, np.ndarray]]
    #: False where tracemalloc cannot see the allocations (torch, JAX)
    host_traced: bool = True
    #: one of :data:`CASES`, and the loss options it passes (to the oracle too)
    case: str = "plain"
    options: dict[str, Any] = field(default_factory=dict)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """One pass, moved to the host; a K-dim gradient as its ``(N, C)`` rows (those of ``inputs``)."""
        import xsoftmax as xs

        loss, d = self.fn()
        d = xs.to_numpy(d)
        if d.ndim > 2:
            d = np.moveaxis(d, 1, -1).reshape(-1, d.shape[1])
        return np.asarray(xs.to_numpy(loss), np.float64), d

    def peak_bytes(self) -> int | None:
        if not self.host_traced:  # (torch on CUDA allocates outside CuPy's pool hook too)
            return None
        return timing.peak_bytes(self.fn, device=self.device)


def host_inputs(shape: tuple[int, int], dtype: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal scores (times 3: a realistic spread of logits) and uniform labels."""
    n, c = shape
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, c), dtype=np.float32 if dtype != "float64" else np.float64)
    scores *= 3
    return scores.astype(dtype, copy=False), rng.integers(0, c, n)


def _as64(x: Any) -> np.ndarray:
    import xsoftmax as xs

    return xs.to_numpy(x).astype(np.float64)


def make_case(
    backend: str,
    engine: str,
    shape: tuple[int, int],
    dtype: str,
    *,
    seed: int = 0,
    client: Any = None,
    case: str = "plain",
) -> Case:
    """``xs.softmax_loss(scores, y, engine=engine)`` on ``backend`` arrays, for ``case`` (:data:`CASES`).

    Dask needs ``client`` (see :func:`dask_client`): its data are created on
    the workers, and each pass persists the gradient and computes the loss
    there. JAX runs under ``jax.jit``, as JAX users run it. Dask and
    bfloat16 rows run the plain case only.
    """
    import xsoftmax as xs

    # "fused-out" is the bench's name for the fused engine with a reused out=.
    lib_engine = cast(Engine, "fused" if engine == "fused-out" else engine)
    if case not in CASES:
        raise ValueError(f"case must be one of {CASES}, got {case!r}")
    if case != "plain" and (backend == "dask" or dtype in NO_NUMPY_DTYPE):
        raise ValueError(f"--case {case} is measured on in-memory backends in NumPy dtypes only")
    if backend == "dask":
        return _dask_case(lib_engine, shape, dtype, seed=seed, client=client)
    if dtype in NO_NUMPY_DTYPE:
        return _bfloat16_case(backend, lib_engine, shape, seed=seed)
    scores, y, rows_scores, rows_y, options = case_inputs(case, *host_inputs(shape, dtype, seed), seed=seed)
    s = xs.asarray(scores, backend=backend)
    yb = xs.asarray(y, backend=backend)
    inputs = lambda: (_as64(rows_scores), rows_y)  # noqa: E731
    label = engine if case == "plain" else f"{engine}[{case}]"
    if backend == "jax":
        import jax

        f = jax.jit(lambda s, y: xs.softmax_loss(s, y, engine=lib_engine, **options))
        return Case(backend, label, "xsoftmax", "cpu", lambda: jax.block_until_ready(f(s, yb)),
                    inputs, host_traced=False, case=case, options=options)
    device = "cuda" if backend == "cupy" else "cpu"
    if engine == "fused-out":
        out = xs.asarray(np.zeros(scores.shape, dtype), backend=backend)  # its pages in place
        fn = lambda: xs.softmax_loss(s, yb, engine="fused", out=out, **options)  # noqa: E731
    else:
        fn = lambda: xs.softmax_loss(s, yb, engine=lib_engine, **options)  # noqa: E731
    return Case(backend, label, "xsoftmax", device, fn, inputs, host_traced=backend != "torch",
                case=case, options=options)


def case_inputs(
    case: str, scores: np.ndarray, y: np.ndarray, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """``(scores, y, rows, rows_y, options)`` of ``case`` made from the plain ``(N, C)`` inputs.

    ``scores``, ``y`` go to ``softmax_loss``; ``rows``, ``rows_y`` are the
    same problem as ``(N, C)`` rows for the oracle (they differ for
    ``kdim`` only); ``options`` go to both.
    """
    if case == "probs":
        rng = np.random.default_rng(seed + 1)
        q = rng.random(scores.shape, dtype=np.float32 if scores.dtype != np.float64 else np.float64)
        q /= q.sum(axis=1, keepdims=True)
        q = q.astype(scores.dtype, copy=False)
        return scores, q, scores, q, {}
    if case == "zloss-softcap":
        return scores, y, scores, y, {"z_loss": 1e-4, "softcap": 30.0}
    if case == "kdim":
        n, c = scores.shape
        d = KDIM_POSITIONS
        if n % d:
            raise ValueError(f"--case kdim needs N divisible by {d}, got N = {n}")
        # Row (n, j) of the (N/d, C, d) batch is row n·d + j of the plain scores.
        batch = np.ascontiguousarray(np.moveaxis(scores.reshape(n // d, d, c), 2, 1))
        return batch, y.reshape(n // d, d), scores, y, {}
    return scores, y, scores, y, {}


def _dask_case(engine: Engine, shape: tuple[int, int], dtype: str, *, seed: int, client: Any) -> Case:
    import xsoftmax as xs

    if client is None:
        raise ValueError("dask rows need a distributed client: use xsoftmax._cli.bench.dask_client()")
    s, y = _dask_inputs(shape, dtype, seed, client)

    def fn() -> tuple[Any, Any]:
        from distributed import wait

        loss, d = client.persist(list(xs.softmax_loss(_fresh(s), _fresh(y), engine=engine)))
        wait([loss, d])
        return loss.compute(), d

    def inputs() -> tuple[np.ndarray, np.ndarray]:
        return gather_blocks(client, s).astype(np.float64), gather_blocks(client, y)

    return Case("dask", engine, "xsoftmax", "dask", fn, inputs)


def gather_blocks(client: Any, x: Any) -> np.ndarray:
    """The host copy of a persisted, row-chunked Dask array, fetched block by block.

    ``client.compute(x)`` would concatenate the blocks in a task on one
    worker, leaving a replica of every block there; the scheduler then runs
    every later task on that worker and the benchmark measures one worker.
    """
    import distributed
    from dask.core import flatten

    futures: list[Any] = [distributed.Future(key, client) for key in flatten(x.__dask_keys__())]
    return np.concatenate(client.gather(futures))


def _identity(block: Any) -> Any:
    return block


def _fresh(x: Any) -> Any:
    """``x`` under new task keys (a no-op task per block).

    Dask names tasks by hashing their inputs, so the same computation
    submitted again gets the same keys, and the scheduler may hand back the
    previous call's results while they are still being released: the repeat
    would time nothing. Fresh keys make every timed call do the work.
    """
    import uuid

    return x.map_blocks(_identity, dtype=x.dtype, name=f"xsoftmax-bench-{uuid.uuid4().hex}")


def _dask_inputs(shape: tuple[int, int], dtype: str, seed: int, client: Any) -> tuple[Any, Any]:
    """Scores and labels generated on the workers (never shipped from here), row-chunked."""
    import dask.array as da
    from distributed import wait

    n, c = shape
    rows = max(1, math.ceil(n / (2 * DASK_WORKERS)))  # two blocks per worker
    rng = da.random.default_rng(seed)
    s = (rng.standard_normal((n, c), chunks=(rows, c)) * 3).astype(dtype)
    y = rng.integers(0, c, n, chunks=rows)
    s, y = client.persist([s, y])
    wait([s, y])
    return s, y


def naive_softmax_loss(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The textbook vectorized NumPy loss: probabilities first, then ``−log p_y``.

    What a CS231n student writes; it allocates several ``N×C`` temporaries and
    turns the probability of a badly wrong class into ``log 0 = −inf``.
    """
    n = scores.shape[0]
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs = exp / exp.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = -np.log(probs[rows, y]).mean()
    dscores = probs
    dscores[rows, y] -= 1
    dscores /= n
    return loss, dscores


def make_peer(name: str, shape: tuple[int, int], dtype: str, *, seed: int = 0, device: str = "cpu") -> Case:
    """A peer implementation of the same mean cross-entropy, forward and backward.

    ``device="cuda"``: the torch peer on CUDA tensors, timed with CUDA events
    like the CuPy rows (torch and CuPy both enqueue on the legacy default stream).
    """
    if name == "torch":
        return _torch_peer(shape, dtype, seed=seed, device=device)
    if device != "cpu" or dtype in NO_NUMPY_DTYPE:
        raise ValueError(f"peer {name} runs on the CPU in float16/32/64 only, got {device} {dtype}")
    scores, y = host_inputs(shape, dtype, seed)
    inputs = lambda: (scores.astype(np.float64), y)  # noqa: E731
    library, label = PEERS[name]
    if name.startswith("xsoftmax."):
        return _adapter_peer(name, label, scores, y, inputs)
    if name == "jax":
        import jax
        import jax.numpy as jnp

        def mean_ce(s: Any, y: Any) -> Any:
            logp = jax.nn.log_softmax(s, axis=1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        f = jax.jit(jax.value_and_grad(mean_ce))
        sj, yj = jnp.asarray(scores), jnp.asarray(y)
        return Case("jax", label, "peer", "cpu", lambda: jax.block_until_ready(f(sj, yj)), inputs,
                    host_traced=False)
    if name == "naive":
        return Case("numpy", label, "peer", "cpu", lambda: naive_softmax_loss(scores, y), inputs)
    raise ValueError(f"peer must be one of {', '.join(PEERS)}, got {name!r}")


def _adapter_peer(name: str, label: str, scores: np.ndarray, y: np.ndarray, inputs: Any) -> Case:
    """``xsoftmax.torch`` / ``xsoftmax.jax`` timed as their framework's peer row is."""
    if name == "xsoftmax.torch":
        import torch

        from ..torch import cross_entropy

        base, yt = torch.from_numpy(scores), torch.from_numpy(y)

        def step() -> tuple[Any, Any]:
            leaf = base.detach().requires_grad_()  # a fresh leaf, as the F.cross_entropy row
            loss = cross_entropy(leaf, yt)
            loss.backward()
            return loss.detach(), leaf.grad

        return Case("torch", label, "peer", "cpu", step, inputs, host_traced=False)
    import jax
    import jax.numpy as jnp

    from ..jax import cross_entropy as jax_cross_entropy

    f = jax.jit(jax.value_and_grad(jax_cross_entropy))
    sj, yj = jnp.asarray(scores), jnp.asarray(y)
    return Case("jax", label, "peer", "cpu", lambda: jax.block_until_ready(f(sj, yj)), inputs,
                host_traced=False)


# --------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def dask_client(n_workers: int = DASK_WORKERS) -> Iterator[Any]:
    """A LocalCluster of ``n_workers`` single-threaded processes, closed on exit."""
    import logging

    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # any free port: never clash with a running cluster
        silence_logs=logging.ERROR,
    ) as cluster, Client(cluster) as client:
        yield client


def floor(
    device: str, shape: tuple[int, int], dtype: str, *, repeat: int, client: Any = None
) -> timing.Timing:
    """The copy floor of ``N×C`` values of ``dtype`` on ``device`` (see :mod:`xsoftmax._cli.timing`)."""
    if device != "dask":
        return timing.copy_floor(device, shape, dtype, repeat=repeat)
    from distributed import wait

    s, _ = _dask_inputs(shape, dtype, 0, client)

    def copy() -> None:
        # The same row blocks copied on the workers that hold them, persisted
        # like the gradient is: the floor includes the scheduler's overhead.
        wait(client.persist(_fresh(s).map_blocks(np.copy, dtype=s.dtype)))

    return timing.copy_floor("dask", shape, dtype, repeat=repeat, copy=copy)


def max_abs_err(case: Case, result: tuple[np.ndarray, np.ndarray], *, block: int = 1 << 20) -> float:
    """``max(|loss − loss₆₄|, max|dscores − dscores₆₄|)`` against the float64 oracle.

    The oracle runs on row blocks of about ``block`` values, so checking a
    large batch needs a few float64 blocks of memory, not several full copies.
    """
    loss, d = result
    scores, y = case.inputs()
    n, c = scores.shape
    rows = max(1, block // c)
    err, total = 0.0, 0.0
    # "mean" divides by N in every case (no weights, nothing ignored: D = V = N).
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        row_loss, grad = oracle_softmax_loss(
            scores[start:stop], y[start:stop], reduction="none", **case.options
        )
        total += float(row_loss.sum())
        err = max(err, float(np.max(np.abs(d[start:stop].astype(np.float64) - grad / n))))
    return max(err, abs(float(loss) - total / n))


@dataclass
class Row:
    """One result row (the JSON schema of ``--json``)."""

    backend: str
    engine: str
    kind: str
    shape: str
    dtype: str
    device: str
    median_ms: float
    spread_ms: float
    min_ms: float
    repeat: int
    gbps: float
    floor_ms: float
    floor_gbps: float
    floor_ratio: float
    max_abs_err: float
    peak_bytes: int | None
    case: str = "plain"  # one of CASES


def measure_case(case: Case, shape: tuple[int, int], dtype: str, floor_timing: timing.Timing,
                 *, repeat: int) -> Row:
    """Warm-up (its result gives the error), timed repeats, then one traced call for the peak."""
    result = case.result()
    err = max_abs_err(case, result)
    del result
    timed = timing.measure(case.fn, repeat=repeat, device=case.device, warmup=0)
    nbytes = timing.pass_bytes(shape, np.dtype(NO_NUMPY_DTYPE.get(dtype, dtype)).itemsize)
    return Row(
        backend=case.backend,
        engine=case.engine,
        kind=case.kind,
        shape=f"{shape[0]}x{shape[1]}",
        dtype=dtype,
        device=case.device,
        median_ms=timed.median * 1e3,
        spread_ms=timed.spread * 1e3,
        min_ms=timed.min * 1e3,
        repeat=repeat,
        gbps=timing.bandwidth_gbps(nbytes, timed.median),
        floor_ms=floor_timing.median * 1e3,
        floor_gbps=timing.bandwidth_gbps(nbytes, floor_timing.median),
        floor_ratio=timing.floor_ratio(nbytes, timed.median, nbytes, floor_timing.median),
        max_abs_err=err,
        peak_bytes=case.peak_bytes(),
        case=case.case,
    )


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name(status: dict[str, str]) -> str | None:
    if status.get("cupy") != "ok":
        return None
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def machine_info(status: dict[str, str]) -> dict[str, Any]:
    """What the numbers were measured on: CPU, GPU, library versions."""
    from importlib import metadata

    versions = {}
    for dist in ("xsoftmax", "numpy", "array-api-compat", "cupy-cuda12x", "cupy-cuda13x", "torch",
                 "jax", "jaxlib", "dask", "distributed", "array-api-strict"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": _gpu_name(status),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "backends": status,
    }


# --------------------------------------------------------------------------- CLI


def parse_shape(text: str, names: str = "NxC") -> tuple[int, ...]:
    """``"16384x1024"`` -> ``(16384, 1024)``; ``names`` ("NxC", "NxDxM") gives the rank.

    Raises ``argparse.ArgumentTypeError`` (a ``ValueError`` is not one) with
    the expected form, so the CLI and the bench suite's environment
    variables report a typo the same way.
    """
    rank = names.count("x") + 1
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != rank:
        raise argparse.ArgumentTypeError(f"a shape is {names}, e.g. {'x'.join(['64'] * rank)}; got {text!r}")
    if min(dims) < 1:
        raise argparse.ArgumentTypeError(f"a shape needs every size >= 1; got {text!r}")
    return dims


def parse_shapes(text: str) -> list[tuple[int, ...]]:
    """``"64x10,32x100"`` -> ``[(64, 10), (32, 100)]`` (each as :func:`parse_shape`)."""
    return [parse_shape(t) for t in comma_list(text)]


def configure(parser: argparse.ArgumentParser) -> None:
    from .._backend import BACKENDS

    shapes = ",".join(f"{n}x{c}" for n, c in DEFAULT_SHAPES)
    parser.add_argument("--backends", type=choice_list(BACKENDS),
                        help=f"comma-separated backends (default: every available one but "
                             f"{', '.join(NOT_BY_DEFAULT)})")
    parser.add_argument("--engines", type=choice_list(("reference", "fused", "fused-row", "fused-out")),
                        help="comma-separated engines (default: reference, and fused where the backend "
                             "has one, fused-row on cupy); fused-out: the fused engine writing into a "
                             "reused out= buffer "
                             f"({', '.join(OUT_BUFFER_BACKENDS)})")
    parser.add_argument("--shapes", type=parse_shapes, default=list(DEFAULT_SHAPES),
                        help=f"comma-separated NxC shapes (default: {shapes})")
    parser.add_argument("--dtype", type=choice_list(DTYPES), default=["float32"],
                        help="comma-separated dtypes: float32, float64, float16, bfloat16 "
                             "(bfloat16: torch rows and the torch peer only) (default: float32)")
    parser.add_argument("--case", type=choice_list(CASES), default=["plain"],
                        help="comma-separated loss cases: plain, probs (probability targets), zloss-softcap, "
                             "kdim (an (N/8, C, 8) batch) (default: plain)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per row (default: 5)")
    parser.add_argument("--peers", nargs="?", type=parse_peers, const=list(PEERS), default=None,
                        help="compare with peers: a comma-separated list of "
                             f"{', '.join(PEERS)}, 'all' (also what a bare --peers means) or 'none'; "
                             "default: all installed peers without --backends, none with it")
    parser.add_argument("--json", metavar="PATH", help="write every row and the machine to PATH")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of GB/s against C (needs matplotlib)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    parser.add_argument("--linear", type=int, metavar="D", default=None,
                        help="instead: the fused linear + softmax loss with x of (N, D) against the unfused "
                             "path and torch, for each --shapes NxC (time, peak memory; --plot: memory vs C)")


def parse_peers(text: str) -> list[str]:
    """``--peers`` and ``XSOFTMAX_BENCH_PEERS``: a comma list of :data:`PEERS`, ``all`` or ``none``."""
    if text in ("all", "none"):
        return list(PEERS) if text == "all" else []
    return choice_list(tuple(PEERS))(text)


def _torch_tensors(shape: tuple[int, int], dtype: str, seed: int, device: str) -> tuple[Any, Any, Any]:
    """Scores (rounded to ``dtype``, on ``device``), labels, and ``inputs()`` giving them as float64."""
    import torch

    scores, y = host_inputs(shape, "float32" if dtype in NO_NUMPY_DTYPE else dtype, seed)
    s = torch.from_numpy(scores).to(device=device, dtype=getattr(torch, dtype))
    yt = torch.from_numpy(y).to(device)
    inputs = lambda: (s.detach().to("cpu", torch.float64).numpy(), y)  # noqa: E731
    return s, yt, inputs


def _torch_peer(shape: tuple[int, int], dtype: str, *, seed: int, device: str) -> Case:
    import torch.nn.functional as F

    s, yt, inputs = _torch_tensors(shape, dtype, seed, device)

    def fn() -> tuple[Any, Any]:
        leaf = s.detach().requires_grad_()  # a fresh leaf: a new gradient every step
        loss = F.cross_entropy(leaf, yt)
        loss.backward()
        return loss.detach(), leaf.grad

    return Case("torch", PEERS["torch"][1], "peer", device, fn, inputs, host_traced=False)


def _bfloat16_case(backend: str, engine: Engine, shape: tuple[int, int], *, seed: int) -> Case:
    """``xs.softmax_loss`` on bfloat16 scores: torch tensors only (NumPy and CuPy have no bfloat16)."""
    if backend != "torch":
        raise ValueError(f"bfloat16 rows need torch tensors; {backend} has no bfloat16 arrays")
    import xsoftmax as xs

    s, yt, inputs = _torch_tensors(shape, "bfloat16", seed, "cpu")
    return Case(backend, engine, "xsoftmax", "cpu", lambda: xs.softmax_loss(s, yt, engine=engine), inputs,
                host_traced=False)


def peer_device(name: str, backends: list[str] | None) -> str:
    """Where peer ``name`` runs: the torch peer on CUDA when CuPy rows are asked for and torch sees a GPU."""
    if name != "torch" or not backends or "cupy" not in backends:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def plan(
    status: dict[str, str],
    *,
    backends: list[str] | None = None,
    engines: list[str] | None = None,
    peers: list[str] | None = None,
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """What a run measures: ``(backend, engine)`` pairs, peer names, and skip notes.

    ``backends=None`` means every available backend but :data:`NOT_BY_DEFAULT`;
    ``peers=None`` means every installed peer then, none when ``backends`` is
    given. Shared by the CLI and the ``bench/`` suite.
    """
    from .._backend import BACKENDS

    skipped = []
    pairs: list[tuple[str, str]] = []
    for backend in backends or BACKENDS:
        if status[backend] != "ok":
            skipped.append(f"{backend}: {status[backend]}")
            continue
        if backends is None and backend in NOT_BY_DEFAULT:
            skipped.append(f"{backend}: {NOT_BY_DEFAULT[backend]}")
            continue
        pairs += [(backend, e) for e in engines_for(backend) if engines is None or e in engines]
        if engines is not None and "fused-out" in engines and backend in OUT_BUFFER_BACKENDS:
            pairs.append((backend, "fused-out"))
    chosen = []
    if peers is None:
        peers = list(PEERS) if backends is None else []
    for peer in peers:
        library = PEERS[peer][0]
        if importlib.util.find_spec(library) is None:
            skipped.append(f"peer {peer}: {library} is not installed")
        else:
            chosen.append(peer)
    return pairs, chosen, skipped


def _progress(i: int, total: int, label: str, note: str = "") -> None:
    print(f"[{i:>{len(str(total))}}/{total}] {label}{note}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import xsoftmax as xs

    try:
        check_positive_int(args.repeat, "--repeat")
    except ValueError as exc:
        print(f"xsoftmax bench: {exc}", file=sys.stderr)
        return 2
    if args.linear is not None:
        from .bench_linear import run_linear

        return run_linear(args)
    if args.plot and (problem := plotting.missing("bench")):
        print(problem, file=sys.stderr)  # before a minute of measuring, not after
        return 2

    started = time.perf_counter()
    status = xs.available_backends()
    pairs, peers, skipped = plan(status, backends=args.backends, engines=args.engines, peers=args.peers)
    unusable = [f"{b}: {status[b]}" for b in args.backends or () if status[b] != "ok"]
    if unusable and not pairs and not peers:  # every backend asked for is unusable: one line, no table
        print(f"xsoftmax bench: no backend to measure: {'; '.join(unusable)}", file=sys.stderr)
        return 2
    uses_jax = any(PEERS[p][0] == "jax" for p in peers) or any(b == "jax" for b, _ in pairs)
    if "float64" in args.dtype and uses_jax:
        enable_jax_float64()
    cases = getattr(args, "case", None) or ["plain"]
    units = [(shape, dtype, item, case) for shape in args.shapes for dtype in args.dtype
             for case in cases
             for item in [*pairs, *((None, p) for p in (peers if case == "plain" else []))]]
    rows: list[Row] = []
    floors: dict[tuple[str, tuple[int, int], str], timing.Timing] = {}
    with contextlib.ExitStack() as stack:
        client = None
        if any(b == "dask" for b, _ in pairs):
            print(f"starting a Dask LocalCluster ({DASK_WORKERS} worker processes) ...", file=sys.stderr,
                  flush=True)
            client = stack.enter_context(dask_client())
        for i, (shape, dtype, (backend, name), case) in enumerate(units, 1):
            label = (f"{backend} {name}" if backend else PEERS[name][1]) + f" {shape[0]}x{shape[1]} {dtype}"
            label += "" if case == "plain" else f" [{case}]"
            try:
                row = _measure_unit(backend, name, shape, dtype, floors, args=args, client=client, case=case)
            except Exception as exc:  # one failing row (e.g. float16 a peer lacks) must not end the run
                skipped.append(f"{label}: {type(exc).__name__}: {exc}")
                _progress(i, len(units), label, f"  failed: {type(exc).__name__}: {exc}")
                continue
            rows.append(row)
            _progress(i, len(units), label, f"  {row.median_ms:.2f} ms, {row.floor_ratio:.2f}x floor")

    elapsed = time.perf_counter() - started
    print_table(rows, floors, skipped, elapsed)
    if args.json:
        report = {
            "machine": machine_info(status),
            "options": {
                "backends": args.backends, "engines": args.engines, "peers": peers,
                "shapes": [f"{n}x{c}" for n, c in args.shapes], "dtype": args.dtype,
                "repeat": args.repeat, "seed": args.seed, "case": getattr(args, "case", ["plain"]),
            },
            "seconds": elapsed,
            "rows": [{k: _finite_or_none(v) for k, v in vars(r).items()} for r in rows],
            "floors": [
                {"device": d, "shape": f"{s[0]}x{s[1]}", "dtype": t, "median_ms": f.median * 1e3,
                 "spread_ms": f.spread * 1e3,
                 "gbps": timing.bandwidth_gbps(
                     timing.pass_bytes(s, np.dtype(NO_NUMPY_DTYPE.get(t, t)).itemsize), f.median)}
                for (d, s, t), f in floors.items()
            ],
            "skipped": skipped,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, allow_nan=False, default=_json_default)
        print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0 if rows else 1


def _measure_unit(backend: str | None, name: str, shape: tuple[int, int], dtype: str,
                  floors: dict[tuple[str, tuple[int, int], str], timing.Timing], *,
                  args: argparse.Namespace, client: Any, case: str = "plain") -> Row:
    """One row; its input buffers are freed on return, before the next row allocates."""
    if backend is None:
        unit = make_peer(name, shape, dtype, seed=args.seed, device=peer_device(name, args.backends))
    else:
        unit = make_case(backend, name, shape, dtype, seed=args.seed, client=client, case=case)
    key = (unit.device, shape, dtype)
    if key not in floors:
        same_bytes = NO_NUMPY_DTYPE.get(dtype, dtype)
        floors[key] = floor(unit.device, shape, same_bytes, repeat=max(args.repeat, 5), client=client)
    return measure_case(unit, shape, dtype, floors[key], repeat=args.repeat)


def _finite_or_none(value: Any) -> Any:
    """JSON has no inf/NaN: a non-finite error (a backend returned NaN) becomes null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _json_default(value: Any) -> Any:
    raise TypeError(f"not JSON serialisable: {value!r}")


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def print_table(rows: list[Row], floors: dict, skipped: list[str], elapsed: float) -> None:
    header = ("backend", "engine", "shape", "dtype", "median ms", "± iqr", "GB/s", "x floor", "max err",
              "peak mem")
    body = [
        (r.backend, r.engine, r.shape, r.dtype, f"{r.median_ms:.2f}", f"{r.spread_ms:.2f}",
         f"{r.gbps:.1f}", f"{r.floor_ratio:.2f}", f"{r.max_abs_err:.1e}", _fmt_bytes(r.peak_bytes))
        for r in rows
    ]
    for line in format_table(header, body, right=range(4, len(header)), rule=True):
        print(line)
    print()
    for (device, shape, dtype), t in floors.items():
        itemsize = np.dtype(NO_NUMPY_DTYPE.get(dtype, dtype)).itemsize
        gbps = timing.bandwidth_gbps(timing.pass_bytes(shape, itemsize), t.median)
        n, c = shape
        print(f"copy floor {device:<4} {n}x{c} {dtype}: {t.median * 1e3:.2f} ms ({gbps:.1f} GB/s)")
    for line in skipped:
        print(f"skipped {line}")
    print(f"x floor = median time / time of a plain copy of the same bytes on the same device "
          f"(1.0 = memory-bound optimum); {len(rows)} rows in {elapsed:.0f} s")


def plot(rows: list[Row], path: str) -> None:
    """PNG of the rows: lines against C for several shapes, bars for one (see :func:`figure`)."""
    plt = plotting.pyplot()
    fig = figure(rows)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def figure(rows: list[Row]) -> Any:
    """GB/s against C (left) and the floor ratio against C (right), one line per backend/engine.

    Both axes are logarithmic: implementations differ by orders of magnitude
    and ratios read as equal distances. Copy floors are black, one line style
    per device. With a single shape, lines would be lone dots: one bar per
    backend/engine instead (see :func:`_bars`).
    """
    if len({r.shape for r in rows}) == 1:
        return _bars(rows)
    plt = plotting.pyplot()
    several_dtypes = len({r.dtype for r in rows}) > 1
    series: dict[str, list[tuple[int, float, float]]] = {}
    floors: dict[tuple[str, str], set[tuple[int, float]]] = {}
    for r in rows:
        c = int(r.shape.split("x")[1])
        label = f"{r.backend} {r.engine}" + (f" {r.dtype}" if several_dtypes else "")
        series.setdefault(label, []).append((c, r.gbps, r.floor_ratio))
        floors.setdefault((r.device, r.dtype), set()).add((c, r.floor_gbps))
    fig, (bw, ratio) = plt.subplots(1, 2, figsize=(15, 5.5), layout="constrained")
    for label, points in series.items():
        cs, gbps, ratios = zip(*sorted(points), strict=True)
        bw.plot(cs, gbps, marker="o", label=label)
        ratio.plot(cs, ratios, marker="o", label=label)
    styles = {"cpu": "--", "cuda": "-.", "dask": ":"}
    for (device, dtype), copies in floors.items():
        cs, gbps = zip(*sorted(copies), strict=True)
        bw.plot(cs, gbps, linestyle=styles.get(device, "--"), color="black", marker="x",
                label=f"copy floor ({device}{f' {dtype}' if several_dtypes else ''})")
    ratio.axhline(1.0, color="black", linestyle="--")
    for ax, ylabel in ((bw, "GB/s  (2·N·C·itemsize / median time)"),
                       (ratio, "× floor  (time / time of a copy of the same bytes)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("classes C")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    bw.set_title("softmax_loss forward+backward: effective bandwidth")
    ratio.set_title("distance from the memory floor (lower is better)")
    fig.legend(*bw.get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    return fig


def _bars(rows: list[Row]) -> Any:
    """One shape: a horizontal bar per backend/engine, GB/s (left) and × floor (right), fastest on top.

    The copy floor of each device is a dashed line on the GB/s panel and 1.0
    on the ratio panel; each bar carries its value, so nothing needs reading
    off a log axis.
    """
    plt = plotting.pyplot()
    several_dtypes = len({r.dtype for r in rows}) > 1
    ordered = sorted(rows, key=lambda r: r.gbps)
    labels = [f"{r.backend} {r.engine}" + (f" {r.dtype}" if several_dtypes else "") for r in ordered]
    ys = np.arange(len(ordered))
    fig, (bw, ratio) = plt.subplots(1, 2, figsize=(13, 1.5 + 0.45 * len(ordered)), layout="constrained",
                                    sharey=True)
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(ordered))]
    bw.barh(ys, [r.gbps for r in ordered], color=colors)
    ratio.barh(ys, [r.floor_ratio for r in ordered], color=colors)
    for y, r in zip(ys, ordered, strict=True):
        bw.annotate(f" {r.gbps:.1f}", (r.gbps, y), va="center", fontsize="small")
        ratio.annotate(f" {r.floor_ratio:.2f}x", (r.floor_ratio, y), va="center", fontsize="small")
    floors = sorted({(r.device, r.dtype): r.floor_gbps for r in rows}.items())
    for i, ((device, dtype), gbps) in enumerate(floors):
        bw.axvline(gbps, color="black", linestyle=("--", ":", "-.")[i % 3],
                   label=f"copy floor ({device}{f' {dtype}' if several_dtypes else ''}): {gbps:.1f} GB/s")
    ratio.axvline(1.0, color="black", linestyle="--")
    bw.set_yticks(ys, labels)
    bw.set_xlabel("GB/s  (2·N·C·itemsize / median time)")
    ratio.set_xlabel("× floor  (time / time of a copy of the same bytes; lower is better)")
    for ax in (bw, ratio):
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.15)
    bw.legend(loc="lower right", fontsize="small")
    fig.suptitle(f"softmax_loss forward+backward, {ordered[0].shape}" +
                 ("" if several_dtypes else f" {ordered[0].dtype}"))
    return fig
