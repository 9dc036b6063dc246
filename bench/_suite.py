"""What the suite measures and how it records it (shared by its test modules).

Kept out of ``conftest.py`` so the test modules can import it by a name of
its own: ``tests/`` has a ``conftest`` too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import xsoftmax as xs
from xsoftmax._backend import BACKENDS
from xsoftmax._cli import bench
from xsoftmax._cli import timing as _timing
from xsoftmax._cli.text import choice_list


def env_setting(name: str, parse: Callable[[str], Any], default: Any) -> Any:
    """The environment variable `name` parsed by `parse` (the CLI's syntax), or `default` when unset."""
    value = os.environ.get(name)
    return parse(value) if value else default


STATUS = xs.available_backends()
SHAPES: list[tuple[int, int]] = env_setting(
    "XSOFTMAX_BENCH_SHAPES", bench.parse_shapes, list(bench.DEFAULT_SHAPES)
)
DTYPES: list[str] = env_setting("XSOFTMAX_BENCH_DTYPES", choice_list(bench.DTYPES), ["float32"])
SELECTED = env_setting("XSOFTMAX_BENCH_BACKENDS", choice_list(BACKENDS), None)
PAIRS, PEERS, SKIPPED = bench.plan(
    STATUS, backends=SELECTED, peers=env_setting("XSOFTMAX_BENCH_PEERS", bench.parse_peers, None)
)
#: backends measured (each once, whatever its engines)
MEASURED: list[str] = list(dict.fromkeys(b for b, _ in PAIRS))


def shape_id(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def record(
    benchmark: Any,
    fn: Callable[[], Any],
    *,
    device: str,
    group: str,
    nbytes: int,
    floor: _timing.Timing | None = None,
    floor_nbytes: int | None = None,
    flops: int | None = None,
    **extra: Any,
) -> None:
    """Benchmark ``fn`` and put bandwidth, floor ratio (and GFLOP/s) in ``extra_info``."""
    benchmark.group = group
    benchmark.extra_info.update(extra, device=device)
    if device == "cuda":
        benchmark(_timing.synchronous(fn, device))
        seconds = _timing.measure(fn, repeat=20, device="cuda").median
        benchmark.extra_info["cuda_event_ms"] = seconds * 1e3
    else:
        benchmark(fn)
        if benchmark.stats is None:  # --benchmark-disable: ran once, nothing to report
            return
        seconds = benchmark.stats.stats.median
    benchmark.extra_info["gbps"] = _timing.bandwidth_gbps(nbytes, seconds)
    if floor is not None:
        benchmark.extra_info["floor_ms"] = floor.median * 1e3
        benchmark.extra_info["floor_ratio"] = _timing.floor_ratio(
            nbytes, seconds, floor_nbytes or nbytes, floor.median
        )
    if flops is not None:
        benchmark.extra_info["gflops"] = flops / seconds / 1e9
