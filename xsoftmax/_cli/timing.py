"""Measurement shared by ``xsoftmax bench`` and the ``bench/`` pytest suite.

Every number the benchmarks report is made here, once:

* :func:`measure` times a callable: host clocks around work that has
  finished when the call returns (NumPy, torch on the CPU, JAX after
  ``block_until_ready``, a persisted Dask result), CUDA events
  (``cupyx.profiler.benchmark``) for CuPy, whose calls only enqueue work.
* :func:`copy_floor` times a plain copy of the same ``N×C`` bytes on the
  same device: the memory floor. A forward+backward pass must at least read
  the scores and write the gradient, which is exactly the traffic of a copy,
  so ``floor_ratio = median / floor_median`` says how far from the memory
  floor an implementation is (1.0 = as fast as a copy).
* :func:`peak_bytes` measures the peak extra memory of one call: tracemalloc
  on the host (NumPy reports its buffers to it), the CuPy memory pool on the
  GPU. Libraries whose allocations neither can see (torch, JAX) get ``None``,
  never a made-up number.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import check_positive_int

__all__ = [
    "PoolPeak",
    "Timing",
    "bandwidth_gbps",
    "copy_floor",
    "floor_ratio",
    "measure",
    "peak_bytes",
    "pass_bytes",
    "summarize",
    "synchronous",
]

#: devices a measurement can run on; "cuda" is the only asynchronous one.
DEVICES = ("cpu", "cuda", "dask")


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed repeat, and their summary."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """Interquartile range (seconds): robust to one slow outlier repeat."""
        if len(self.times) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return q3 - q1

    @property
    def min(self) -> float:
        return min(self.times)


def summarize(times: Sequence[float]) -> Timing:
    """A :class:`Timing` from raw per-repeat seconds (validated)."""
    times = tuple(float(t) for t in times)
    if not times:
        raise ValueError("no timed repeats: repeat must be at least 1")
    return Timing(times)


def pass_bytes(shape: tuple[int, int], itemsize: int) -> int:
    """Bytes a forward+backward pass must move: read ``N×C`` scores, write ``N×C`` gradient.

    The labels (``N`` integers) are left out: next to ``N×C`` values they
    are noise, and leaving them out keeps the pass and the copy comparable.
    """
    n, c = shape
    return 2 * n * c * itemsize


def bandwidth_gbps(nbytes: int, seconds: float) -> float:
    """Effective bandwidth in GB/s (10⁹ bytes per second)."""
    return nbytes / seconds / 1e9 if seconds > 0 else float("inf")


def floor_ratio(nbytes: int, seconds: float, floor_nbytes: int, floor_seconds: float) -> float:
    """Copy bandwidth over achieved bandwidth: 1.0 at the memory floor, 3.0 at a third of it.

    For a pass that moves the bytes of the copy (the loss: read ``N×C``,
    write ``N×C``) this is simply ``seconds / floor_seconds``; a pass that
    moves more (ReLU backward reads two arrays) is held to the time a copy
    would take for its bytes.
    """
    return bandwidth_gbps(floor_nbytes, floor_seconds) / bandwidth_gbps(nbytes, seconds)


def _measure_host(fn: Callable[[], Any], repeat: int, warmup: int) -> Timing:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return summarize(times)


def _measure_cuda(fn: Callable[[], Any], repeat: int, warmup: int) -> Timing:
    """CUDA-event times of ``fn`` on the current device.

    ``cupyx.profiler.benchmark`` records an event before and after each call
    and synchronises on the second, so kernel time is measured on the device
    clock, not the time the host took to enqueue the launches.
    """
    from cupyx.profiler import benchmark

    result = benchmark(fn, n_repeat=repeat, n_warmup=warmup)
    return summarize(np.asarray(result.gpu_times)[0])


def measure(fn: Callable[[], Any], *, repeat: int, device: str = "cpu", warmup: int = 1) -> Timing:
    """Time ``repeat`` calls of ``fn`` after ``warmup`` untimed ones.

    ``device="cuda"`` uses CUDA events; ``"cpu"`` and ``"dask"`` use
    ``time.perf_counter``, so ``fn`` must return only once its work is done.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    check_positive_int(repeat, "repeat")
    if device == "cuda":
        return _measure_cuda(fn, repeat, warmup)
    return _measure_host(fn, repeat, warmup)


def _copy_fn(device: str, shape: tuple[int, int], dtype: str) -> Callable[[], Any]:
    """A plain copy of an ``N×C`` buffer of ``dtype`` into a preallocated one."""
    if device == "cuda":
        import cupy

        src = cupy.ones(shape, dtype=dtype)
        dst = cupy.empty_like(src)
        return lambda: cupy.copyto(dst, src)
    if device == "cpu":
        src = np.ones(shape, dtype=dtype)
        dst = np.empty_like(src)
        return lambda: np.copyto(dst, src)
    raise ValueError(f"copy_floor: no built-in copy for device {device!r}; pass copy=")


def synchronous(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    """``fn`` made to return only when its work is done, for host-clock timers.

    Only ``"cuda"`` needs it: CuPy calls return once kernels are enqueued.
    """
    if device != "cuda":
        return fn

    def call_and_sync() -> Any:
        import cupy

        out = fn()
        cupy.cuda.get_current_stream().synchronize()
        return out

    return call_and_sync


def copy_floor(
    device: str,
    shape: tuple[int, int],
    dtype: str,
    *,
    repeat: int,
    copy: Callable[[], Any] | None = None,
) -> Timing:
    """Time a copy of ``N×C`` values of ``dtype`` on ``device`` (the memory floor).

    The destination is allocated once, so the floor is the bandwidth of the
    memory itself, not of the allocator. ``copy`` replaces the built-in copy
    for devices that need their own (a Dask cluster copies on its workers).
    """
    fn = copy if copy is not None else _copy_fn(device, shape, dtype)
    return measure(fn, repeat=repeat, device=device, warmup=2)


class PoolPeak:
    """CuPy memory hook tracking the peak of the pool allocations it sees.

    Only allocations made while the hook is active are counted (a buffer
    allocated before and freed during the call is not subtracted), so the
    result is the peak *extra* device memory of the call.
    """

    def __init__(self) -> None:
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def malloc_postprocess(self, **kw: Any) -> None:
        self.live[kw["mem_ptr"]] = kw["mem_size"]
        self.current += kw["mem_size"]
        self.peak = max(self.peak, self.current)

    def free_postprocess(self, **kw: Any) -> None:
        self.current -= self.live.pop(kw["mem_ptr"], 0)


def _cuda_hook(tracker: PoolPeak) -> Any:
    from cupy.cuda import memory_hook

    class Hook(memory_hook.MemoryHook):
        name = "xsoftmax_peak"

        def malloc_postprocess(self, **kw: Any) -> None:
            tracker.malloc_postprocess(**kw)

        def free_postprocess(self, **kw: Any) -> None:
            tracker.free_postprocess(**kw)

    return Hook()


def peak_bytes(fn: Callable[[], Any], *, device: str = "cpu") -> int | None:
    """Peak extra memory (bytes) allocated during one call of ``fn``.

    The result of ``fn`` is kept alive until the peak is read, so the output
    arrays count (a pass that returns an ``N×C`` gradient allocates at least
    ``N×C`` values). ``None`` where this device's allocations are not visible
    (``"dask"``: they happen in the worker processes).
    """
    if device == "dask":
        return None
    if device == "cuda":
        import cupy

        tracker = PoolPeak()
        with _cuda_hook(tracker):
            result = fn()
            cupy.cuda.get_current_stream().synchronize()
        del result
        return tracker.peak
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was_tracing:
            tracemalloc.stop()
    del result
    return max(peak, 0)
