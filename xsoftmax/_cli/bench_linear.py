r"""``xsoftmax bench --linear D``: the fused linear + softmax loss against the unfused path and PyTorch.

For each ``N×C`` of ``--shapes`` and ``x`` of ``(N, D)``, three rows, forward
and backward of the loss of ``x w + b`` with gradients of ``x``, ``w``, ``b``:

* ``fused``: :func:`xsoftmax.linear_softmax_loss` on NumPy arrays;
* ``unfused``: ``affine_forward`` → ``softmax_loss`` → ``affine_backward``
  (the ``(N, C)`` logits and their gradient exist at once);
* ``torch``: ``F.linear`` + ``F.cross_entropy`` + ``backward()`` on CPU
  tensors (skipped without torch).

Each row reports the median time over ``--repeat`` calls (after a warm-up)
and its ratio to the unfused row of the same run; ``peak_extra``, the
tracemalloc peak during one call minus the returned ``dx``, ``dw``, ``db``
(NumPy rows; tracemalloc does not see torch's allocator) as a share of the
``N×C`` logits; and ``rss_extra``, the growth of the process's peak
resident set (``VmHWM``, results included) during one call, each case in a fresh subprocess (all rows,
so torch is comparable). ``--plot`` draws peak extra memory against ``C``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import plotting, timing

__all__ = ["CASES", "LinearRow", "linear_case", "plot_linear", "rss_extra", "run_linear"]

CASES = ("fused", "unfused", "torch")


@dataclass
class LinearRow:
    case: str
    n: int
    d: int
    c: int
    dtype: str
    median_ms: float
    time_ratio: float  # median over the unfused row's median
    peak_extra: int | None  # bytes; tracemalloc, results left out
    rss_extra: int | None  # bytes; max-RSS growth in a fresh process


def linear_inputs(n: int, d: int, c: int, dtype: str, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    w = (rng.standard_normal((d, c)) / np.sqrt(d)).astype(dtype)
    b = (0.1 * rng.standard_normal(c)).astype(dtype)
    y = rng.integers(0, c, n)
    return x, w, b, y


def linear_case(name: str, x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray) -> Any:
    """A no-argument callable computing ``(loss, dx, dw, db)`` the ``name`` way."""
    import xsoftmax as xs

    if name == "fused":
        return lambda: xs.linear_softmax_loss(x, w, b, y)
    if name == "unfused":

        def unfused() -> tuple[Any, ...]:
            scores, cache = xs.affine_forward(x, w, b)
            loss, dscores = xs.softmax_loss(scores, y)
            del scores
            return (loss, *xs.affine_backward(dscores, cache))

        return unfused
    if name == "torch":
        import torch
        import torch.nn.functional as F

        tx, tw, tb = (torch.from_numpy(a) for a in (x, np.ascontiguousarray(w.T), b))
        ty = torch.from_numpy(y)

        def torch_case() -> tuple[Any, ...]:
            leaves = [t.detach().requires_grad_() for t in (tx, tw, tb)]
            loss = F.cross_entropy(F.linear(*leaves), ty)
            loss.backward()
            return (loss.detach(), *(t.grad for t in leaves))

        return torch_case
    raise ValueError(f"case must be one of {CASES}, got {name!r}")


def _result_bytes(result: tuple[Any, ...]) -> int:
    return sum(int(a.nbytes) for a in result[1:] if a is not None)


def rss_extra(name: str, n: int, d: int, c: int, dtype: str, seed: int) -> int | None:
    """Max-RSS growth (bytes) during one call of case ``name``, in a fresh Python process."""
    cmd = [sys.executable, "-m", "xsoftmax._cli.bench_linear", name, str(n), str(d), str(c), dtype, str(seed)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    if done.returncode != 0:
        return None
    return int(json.loads(done.stdout.strip().splitlines()[-1])["rss_extra"])


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_peak_reset() -> int:
    """Reset the peak resident set to the current one where Linux allows; returns the baseline in bytes.

    ``ru_maxrss`` cannot serve: a child inherits its parent's peak through
    fork and exec, so a large parent hides the child's call.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to VmRSS
        return 1024 * (_status_kib("VmRSS") or 0)
    except OSError:
        hwm = _status_kib("VmHWM")
        if hwm is not None:
            return 1024 * hwm
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        return scale * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _rss_peak() -> int:
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return 1024 * hwm
    scale = 1 if sys.platform == "darwin" else 1024
    return scale * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _rss_main(argv: list[str]) -> None:
    name, n, d, c, dtype, seed = argv[0], *map(int, argv[1:4]), argv[4], int(argv[5])
    # A tiny call first: imports and one-time set-up are not the call's memory.
    linear_case(name, *linear_inputs(4, d, 8, dtype, seed))()
    inputs = linear_inputs(n, d, c, dtype, seed)
    fn = linear_case(name, *inputs)
    before = _rss_peak_reset()
    result = fn()
    after = _rss_peak()
    del result
    print(json.dumps({"rss_extra": max(0, after - before)}))


def measure_linear(n: int, d: int, c: int, dtype: str, *, repeat: int, seed: int,
                   cases: tuple[str, ...] = CASES) -> list[LinearRow]:  # fmt: skip
    """The rows of one shape, measured in one run (ratios against the unfused row)."""
    inputs = linear_inputs(n, d, c, dtype, seed)
    timings: dict[str, tuple[float, int | None]] = {}
    for name in cases:
        fn = linear_case(name, *inputs)
        timed = timing.measure(fn, repeat=repeat)
        peak = None
        if name != "torch":
            box: list[Any] = []
            total = timing.peak_bytes(lambda: box.append(fn()))  # noqa: B023 (called at once)
            peak = None if total is None else total - _result_bytes(box.pop())
        timings[name] = (timed.median, peak)
    base = timings.get("unfused", (float("nan"), None))[0]
    return [
        LinearRow(name, n, d, c, dtype, t * 1e3, t / base, peak, rss_extra(name, n, d, c, dtype, seed))
        for name, (t, peak) in timings.items()
    ]


def _mib(v: int | None) -> str:
    return "n/a" if v is None else f"{v / 2**20:.1f} MiB"


def print_linear(rows: list[LinearRow]) -> None:
    print(f"{'case':8} {'N×D×C':>16} {'dtype':8} {'median':>10} {'×unfused':>9} "
          f"{'peak extra':>12} {'/logits':>8} {'RSS extra':>12} {'/logits':>8}")  # fmt: skip
    for r in rows:
        logits = r.n * r.c * np.dtype(r.dtype).itemsize
        share = lambda v, logits=logits: "n/a" if v is None else f"{v / logits:.3f}"  # noqa: E731
        print(f"{r.case:8} {f'{r.n}×{r.d}×{r.c}':>16} {r.dtype:8} {r.median_ms:>8.1f}ms {r.time_ratio:>9.2f} "
              f"{_mib(r.peak_extra):>12} {share(r.peak_extra):>8} {_mib(r.rss_extra):>12} "
              f"{share(r.rss_extra):>8}")  # fmt: skip


def plot_linear(rows: list[LinearRow], path: str) -> None:
    """PNG: peak extra memory (tracemalloc; torch: max RSS) against C, one line per case."""
    plt = plotting.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    for case in CASES:
        pts = sorted((r.c, r.peak_extra if r.peak_extra is not None else r.rss_extra)
                     for r in rows if r.case == case)  # fmt: skip
        pts = [(c, v) for c, v in pts if v is not None]
        if pts:
            cs, vs = zip(*pts, strict=True)
            label = case + (" (max RSS)" if case == "torch" else "")
            ax.plot(cs, [v / 2**20 for v in vs], marker="o", label=label)
    logit_pts = sorted({(r.c, r.n * r.c * np.dtype(r.dtype).itemsize) for r in rows})
    if logit_pts:
        cs, vs = zip(*logit_pts, strict=True)
        ax.plot(cs, [v / 2**20 for v in vs], color="black", linestyle="--", label="N×C logits")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("classes C")
    ax.set_ylabel("peak extra memory during one call (MiB, results left out)")
    ax.set_title("fused linear + softmax loss: peak memory")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def run_linear(args: argparse.Namespace) -> int:
    """``xsoftmax bench --linear D``: rows for every ``--shapes`` N×C and the first ``--dtype``."""
    import importlib.util

    if args.plot and (problem := plotting.missing("bench")):
        print(problem, file=sys.stderr)
        return 2
    if args.linear < 1:
        print("xsoftmax bench: --linear D needs D >= 1", file=sys.stderr)
        return 2
    cases = tuple(c for c in CASES if c != "torch" or importlib.util.find_spec("torch") is not None)
    rows: list[LinearRow] = []
    for n, c in args.shapes:
        rows += measure_linear(n, args.linear, c, args.dtype[0], repeat=args.repeat, seed=args.seed,
                               cases=cases)  # fmt: skip
    print_linear(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"linear": [vars(r) for r in rows]}, f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot_linear(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0 if rows else 1


if __name__ == "__main__":
    _rss_main(sys.argv[1:])
