"""The pytest-benchmark suite: ``pytest bench --benchmark-only``.

It measures what ``xsoftmax bench`` measures, with the same cases
(:func:`xsoftmax._cli.bench.make_case`, :func:`~xsoftmax._cli.bench.make_peer`), the
same selection rule (:func:`xsoftmax._cli.bench.plan`) and the same copy floor
(:func:`xsoftmax._cli.bench.floor`); pytest-benchmark does the repeating and the
statistics. Each result's ``extra_info`` holds ``gbps`` and ``floor_ratio``
(copy bandwidth over achieved bandwidth, 1.0 = the memory floor), and
results are grouped by operation, shape and dtype so the backends of one
group sit side by side in the report.

Choose what runs with environment variables (the CLI's syntax):
``XSOFTMAX_BENCH_BACKENDS=numpy,dask``, ``XSOFTMAX_BENCH_SHAPES=16384x1024``,
``XSOFTMAX_BENCH_DTYPES=float32,float64``, ``XSOFTMAX_BENCH_PEERS=none``,
``XSOFTMAX_BENCH_LAYER_SHAPES=2048x1024x512`` (N×D×M).

CuPy calls return before the GPU is done, so the benchmarked callable
synchronises the stream, and the ratios use CUDA-event times
(``extra_info["cuda_event_ms"]``), as ``xsoftmax bench`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from xsoftmax._cli import bench
from xsoftmax._cli import timing as _timing

from _suite import SKIPPED


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"xsoftmax bench: skipped {line}" for line in SKIPPED]


@pytest.fixture(scope="session")
def dask_client() -> Any:
    """The LocalCluster of ``xsoftmax bench``, started only if a Dask case asks for it."""
    with bench.dask_client() as client:
        yield client


@pytest.fixture(scope="session")
def copy_floor() -> Callable[..., _timing.Timing]:
    """``copy_floor(device, shape, dtype, client=None)``: measured once per session."""
    cache: dict[tuple[str, tuple[int, int], str], _timing.Timing] = {}

    def get(device: str, shape: tuple[int, int], dtype: str, client: Any = None) -> _timing.Timing:
        key = (device, shape, dtype)
        if key not in cache:
            cache[key] = bench.floor(device, shape, dtype, repeat=10, client=client)
        return cache[key]

    return get
