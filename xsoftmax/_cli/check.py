r"""``xsoftmax check``: prove every backend and engine on this machine gives the same answers.

Each available backend × engine computes ``softmax_loss`` under every
option combination (reduction × class weights × ``ignore_index`` × label
smoothing), then class-probability targets, K-dimensional batches, z-loss
and softcap (:func:`target_checks`), the primitives and the affine / ReLU
layers with their backward passes, on random and adversarial inputs (logits
of ±1e4, ``−inf`` masks, ``N = 1``, ``C = 1``, float16). Every result is
compared with the float64 NumPy *oracle* of :mod:`xsoftmax._cli.oracle`,
written from the definitions independently of the library's engines (a
broken reference engine must not be its own judge) and itself checked
against torch autograd by the test suite. A comparison passes when
``|actual − oracle| ≤ atol · max(1, max|oracle|) + rtol · |oracle|`` with
``(rtol, atol)`` set by the output dtype; matching infinities and NaNs count
as equal. The exit status is 1 if anything fails.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._typing import Engine
from .._validate import REDUCTIONS
from .oracle import oracle_log_softmax, oracle_logsumexp, oracle_softmax_loss
from .text import comma_list, format_table

__all__ = [
    "TOLERANCES",
    "compare",
    "configure",
    "enable_jax_float64",
    "engines_for",
    "oracle_log_softmax",
    "oracle_logsumexp",
    "oracle_softmax_loss",
    "run",
    "target_checks",
]

#: (rtol, atol) by output dtype name, against a float64 oracle: the one table
#: of ``xsoftmax check`` and of the tests (tests/_helpers.py). Half precision
#: is computed in float32 and rounded once to the output, so its tolerance is
#: a few half-ulps; bfloat16 (8 significant bits, eps 2^-7) likewise, a few of its ulps.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-12),
    "float32": (2e-5, 2e-6),
    "float16": (4e-3, 1e-5),
    "bfloat16": (4e-2, 2e-2),
}

#: the input dtypes ``xsoftmax check`` runs (every backend may lack some)
CHECKED_DTYPES = ("float64", "float32", "float16")
IGNORE = -100  # torch's default ignore_index: out of range, so engines must not index with it
SMOOTHING = 0.1

#: what the check generators yield: (case, dtype, compute, expected)
Check = tuple[str, str, Callable[[], Any], np.ndarray]


# --------------------------------------------------------------------------- comparison


def compare(actual: Any, expected: np.ndarray, dtype: str) -> tuple[float, float]:
    """``(max |actual − expected|, max err/tol)``; ``inf`` for a shape or non-finite mismatch."""
    import xsoftmax as xs

    a = xs.to_numpy(actual).astype(np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return math.inf, math.inf
    same_nonfinite = (np.isnan(a) & np.isnan(e)) | (np.isinf(e) & (a == e))
    if np.any(~np.isfinite(a) & ~same_nonfinite) or np.any(~np.isfinite(e) & ~same_nonfinite):
        return math.inf, math.inf
    a, e = np.where(same_nonfinite, 0.0, a), np.where(same_nonfinite, 0.0, e)
    if a.size == 0:
        return 0.0, 0.0
    rtol, atol = TOLERANCES[dtype]
    err = np.abs(a - e)
    tol = atol * max(1.0, float(np.max(np.abs(e)))) + rtol * np.abs(e)
    return float(err.max()), float((err / tol).max())


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Inputs:
    """One input set: float64 values (cast to ``dtype`` on the backend) and labels."""

    name: str
    scores: np.ndarray
    y: np.ndarray
    dtype: str


def loss_inputs(seed: int) -> list[Inputs]:
    """Random and adversarial ``(scores, y)`` sets."""
    rng = np.random.default_rng(seed)

    def labels(n: int, c: int) -> np.ndarray:
        return rng.integers(0, c, n)

    rand = rng.standard_normal((8, 5)) * 3
    big = rng.uniform(-1e4, 1e4, (8, 5))
    big[:, 1] = big.max(axis=1) - 0.5  # two near-equal huge logits: p is not one-hot
    masked = rng.standard_normal((8, 6))
    y_masked = labels(8, 6)
    mask = rng.random((8, 6)) < 0.4
    mask[np.arange(8), y_masked] = False  # a masked target would make the loss inf
    mask[0] = True
    mask[0, y_masked[0]] = False  # a row where only the target survives
    masked[mask] = -np.inf
    sets = []
    for dtype in ("float64", "float32"):
        sets += [
            Inputs("random", rand, labels(8, 5), dtype),
            Inputs("logits ±1e4", big, labels(8, 5), dtype),
            Inputs("-inf mask", masked, y_masked, dtype),
            Inputs("N=1", rng.standard_normal((1, 7)), labels(1, 7), dtype),
            Inputs("C=1", rng.standard_normal((6, 1)), np.zeros(6, np.int64), dtype),
        ]
    # float16 values are exact in float64, so the oracle sees what the backend sees.
    half = (rng.standard_normal((8, 5)) * 4).astype(np.float16).astype(np.float64)
    sets.append(Inputs("random", half, labels(8, 5), "float16"))
    return sets


def _with_ignored(y: np.ndarray) -> np.ndarray:
    """Every third label replaced by the ignored one (row 0 stays, unless N = 1)."""
    y = y.copy()
    y[1::3] = IGNORE
    if y.size == 1:
        y[0] = IGNORE  # N = 1, all ignored: "mean" is 0/0
    return y


@dataclass
class Tally:
    """Worst result of one (backend, engine, group)."""

    checks: int = 0
    failures: list[str] = field(default_factory=list)
    worst_err: float = 0.0
    worst_ratio: float = 0.0
    worst_case: str = ""

    def add(self, case: str, err: float, ratio: float) -> None:
        self.checks += 1
        if not ratio <= 1.0:  # NaN ratios fail too
            self.failures.append(f"{case}: err {err:.3g} ({ratio:.3g}× tol)")
        if ratio >= self.worst_ratio or math.isnan(ratio):
            self.worst_err, self.worst_ratio, self.worst_case = err, ratio, case

    def crash(self, case: str, exc: BaseException) -> None:
        self.checks += 1
        self.failures.append(f"{case}: raised {type(exc).__name__}: {exc}")
        self.worst_err = self.worst_ratio = math.inf
        self.worst_case = case


def engines_for(backend: str) -> list[Engine]:
    """``reference`` always, ``fused`` where the backend has a fused engine, ``fused-row`` on CuPy."""
    from .._engines import has_fused

    engines: list[Engine] = ["reference"]
    if has_fused(backend):
        engines.append("fused")
    if backend == "cupy":
        engines.append("fused-row")
    return engines


def _has_dtype(backend: str, dtype: str) -> bool:
    """Whether ``xs.asarray`` can make ``dtype`` arrays on ``backend`` (Dask can, by NumPy's name)."""
    import xsoftmax as xs

    try:
        xs.asarray(np.zeros(1), backend=backend, dtype=dtype)
    except (ValueError, TypeError):
        return False
    return True


def _on(backend: str, values: np.ndarray, dtype: str | None = None) -> Any:
    import xsoftmax as xs

    return xs.asarray(values, backend=backend, dtype=dtype)


def _run_checks(
    tally: Tally, backend: str, checks: Iterator[Check]
) -> None:
    """Run ``(case, dtype, compute, expected)`` items, recording errors and crashes.

    Each output must be an array of ``backend`` with the inputs' dtype before
    its values are compared: a right number in the wrong place fails too.
    """
    import xsoftmax as xs

    from .._backend import array_namespace, backend_name

    for case, dtype, compute, expected in checks:
        try:
            # The inputs are adversarial on purpose (inf − inf, 0/0 when every
            # row is ignored); the comparison judges the values, not the warnings.
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                actual = compute()
                # Lazy (Dask) results compute here, inside the same silence.
                values = xs.to_numpy(actual)
            got = backend_name(array_namespace(actual, names=("output",)))
            if got != backend:
                raise TypeError(f"output is a {got} array, expected a {backend} array")
            if _dtype_of(actual) != dtype:
                raise TypeError(f"output has dtype {_dtype_of(actual)}, expected {dtype}")
        except Exception as exc:  # a crash is a failure of that case, not of the run
            tally.crash(case, exc)
            continue
        tally.add(case, *compare(values, expected, dtype))


def _dtype_of(actual: Any) -> str:
    return str(actual.dtype).rsplit(".", 1)[-1]


def loss_checks(backend: str, engine: Engine, seed: int) -> Iterator[Check]:
    import xsoftmax as xs

    for inp in loss_inputs(seed):
        if not _has_dtype(backend, inp.dtype):
            continue
        n, c = inp.scores.shape
        s = _on(backend, inp.scores, inp.dtype)
        host = xs.to_numpy(s).astype(np.float64)
        weight_values = np.random.default_rng(seed + c).uniform(0.5, 2.0, size=(c,))
        for reduction in REDUCTIONS:
            for weighted in (False, True):
                for ignore_index in (None, IGNORE):
                    for smoothing in (0.0, SMOOTHING):
                        y = inp.y if ignore_index is None else _with_ignored(inp.y)
                        wv = weight_values if weighted else None
                        options: dict[str, Any] = dict(
                            reduction=reduction, ignore_index=ignore_index, label_smoothing=smoothing
                        )
                        want = oracle_softmax_loss(host, y, weight=wv, **options)
                        case = (
                            f"{inp.name} {inp.dtype} {n}x{c} reduction={reduction}"
                            f"{' weight' if weighted else ''}"
                            f"{' ignore_index' if ignore_index is not None else ''}"
                            f"{f' smoothing={smoothing}' if smoothing else ''}"
                        )
                        yb = _on(backend, y)
                        wb = None if wv is None else _on(backend, wv, inp.dtype)

                        def both(s=s, yb=yb, wb=wb, options=options) -> Any:
                            return xs.softmax_loss(s, yb, weight=wb, engine=engine, **options)

                        yield from _pair(case, inp.dtype, both, want)


def _target_scenarios(seed: int) -> list[tuple[str, np.ndarray, np.ndarray, list[dict[str, Any]]]]:
    """``(name, scores, y, option sets)`` for issue 15's options; weights are filled in by the caller."""
    rng = np.random.default_rng(seed + 15)
    probs = rng.random((8, 5))  # need not sum to 1
    kdim = rng.standard_normal((3, 5, 4)) * 3
    kdim_y = rng.integers(0, 5, (3, 4))
    kdim_y[0, 1] = kdim_y[2, 3] = IGNORE
    big = rng.uniform(-1e4, 1e4, (8, 5))
    masked = rng.standard_normal((8, 6))
    masked_y = rng.integers(0, 6, 8)
    mask = rng.random((8, 6)) < 0.4
    mask[np.arange(8), masked_y] = False
    masked[mask] = -np.inf
    rand = rng.standard_normal((8, 5)) * 3
    rand_y = _with_ignored(rng.integers(0, 5, 8))
    smooth_w = {"weight": True, "label_smoothing": SMOOTHING}
    every = {"weight": True, "ignore_index": IGNORE, "label_smoothing": SMOOTHING}
    return [
        ("probabilities", rand, probs, [{}, {"weight": True}, {"label_smoothing": SMOOTHING}, smooth_w]),
        ("K-dim labels", kdim, kdim_y, [{"ignore_index": IGNORE}, every]),
        ("K-dim probabilities", kdim[:2, :, :3], rng.random((2, 5, 3)), [{}, smooth_w]),
        ("z-loss", rand, rand_y, [{"z_loss": 1e-2, "ignore_index": IGNORE}, {"z_loss": 0.1, **every}]),
        ("softcap logits ±1e4", big, rng.integers(0, 5, 8),
         [{"softcap": 30.0}, {"softcap": 5.0, **smooth_w}]),
        ("softcap+z-loss -inf mask", masked, masked_y, [{"softcap": 5.0, "z_loss": 1e-3}]),
        ("all options K-dim probabilities", kdim[:2], rng.random((2, 5, 4)),
         [{"z_loss": 5e-2, "softcap": 4.0, **smooth_w}]),
    ]  # fmt: skip


def target_checks(backend: str, engine: Engine, seed: int) -> Iterator[Check]:
    """Probability targets, K-dim batches, z-loss and softcap, every reduction, against the oracle."""
    import xsoftmax as xs

    for dtype in ("float64", "float32"):
        if not _has_dtype(backend, dtype):
            continue
        for name, scores, y, option_sets in _target_scenarios(seed):
            s = _on(backend, scores, dtype)
            host = xs.to_numpy(s).astype(np.float64)
            c = scores.shape[1]
            probabilities = y.dtype.kind == "f"
            yb = _on(backend, y, dtype) if probabilities else _on(backend, y)
            y_host = xs.to_numpy(yb).astype(np.float64) if probabilities else y
            weight_values = np.random.default_rng(seed + c).uniform(0.5, 2.0, size=(c,))
            for opts in option_sets:
                for reduction in REDUCTIONS:
                    options = {k: v for k, v in opts.items() if k != "weight"}
                    options["reduction"] = reduction
                    wv = weight_values if opts.get("weight") else None
                    want = oracle_softmax_loss(host, y_host, weight=wv, **options)
                    tags = " ".join(
                        ("weight" if k == "weight" else f"{k}={v}") for k, v in opts.items()
                    )
                    case = f"{name} {dtype} {'x'.join(map(str, scores.shape))} reduction={reduction} {tags}"
                    wb = None if wv is None else _on(backend, wv, dtype)

                    def both(s=s, yb=yb, wb=wb, options=options) -> Any:
                        return xs.softmax_loss(s, yb, weight=wb, engine=engine, **options)

                    yield from _pair(case.rstrip(), dtype, both, want)


def _pair(case: str, dtype: str, compute: Callable[[], Any], want: tuple[np.ndarray, ...]):
    """One check per output of a multi-output function, computing it once."""
    cached: list[Any] = []

    def output(i: int) -> Callable[[], Any]:
        def get() -> Any:
            if not cached:
                cached.append(compute())
            return cached[0][i]

        return get

    for i, expected in enumerate(want):
        yield f"{case} [output {i}]", dtype, output(i), expected


def primitive_checks(backend: str, seed: int) -> Iterator[Check]:
    import xsoftmax as xs

    fns = {
        "logsumexp": (xs.logsumexp, oracle_logsumexp),
        "softmax": (xs.softmax, lambda s, axis: np.exp(oracle_log_softmax(s, axis))),
        "log_softmax": (xs.log_softmax, oracle_log_softmax),
    }
    for inp in loss_inputs(seed):
        if not _has_dtype(backend, inp.dtype):
            continue
        s = _on(backend, inp.scores, inp.dtype)
        host = xs.to_numpy(s).astype(np.float64)
        for name, (fn, oracle) in fns.items():
            for axis in (-1, 0):
                n, c = inp.scores.shape
                case = f"{name} axis={axis} {inp.name} {inp.dtype} {n}x{c}"
                yield from _pair(case, inp.dtype, _call(fn, s, axis), (oracle(host, axis),))


def _call(fn: Callable[..., Any], s: Any, axis: int) -> Callable[[], tuple[Any]]:
    """``lambda: (fn(s, axis=axis),)``, bound now rather than when the check runs."""
    return lambda: (fn(s, axis=axis),)


def layer_checks(backend: str, seed: int) -> Iterator[Check]:
    """Affine / ReLU forward and backward against their float64 formulas."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 3, 2))
    x[0, 0, 0] = 0.0  # ReLU at exactly 0: subgradient 0
    w = rng.standard_normal((6, 5))
    b = rng.standard_normal(5)
    dout = rng.standard_normal((4, 5))
    for dtype in ("float64", "float32"):
        yield from _layer_checks_in(backend, dtype, x, w, b, dout)


def _layer_checks_in(
    backend: str, dtype: str, x: np.ndarray, w: np.ndarray, b: np.ndarray, dout: np.ndarray
) -> Iterator[Check]:
    """The layer checks in one dtype (a function of its own, so each closure binds its own arrays)."""
    import xsoftmax as xs

    xb, wb, bb, db = (_on(backend, v, dtype) for v in (x, w, b, dout))
    hx, hw, hb, hd = (xs.to_numpy(v).astype(np.float64) for v in (xb, wb, bb, db))
    x2 = hx.reshape(4, 6)
    a = x2 @ hw + hb
    active = a > 0
    da = hd * active
    tag = f"{dtype} x{hx.shape}"
    yield from _pair(f"affine_forward {tag}", dtype, lambda: (xs.affine_forward(xb, wb, bb)[0],), (a,))
    yield from _pair(
        f"affine_backward {tag}", dtype,
        lambda: xs.affine_backward(db, xs.affine_forward(xb, wb, bb)[1]),
        ((hd @ hw.T).reshape(hx.shape), x2.T @ hd, hd.sum(0)),
    )
    yield from _pair(f"relu_forward {tag}", dtype, lambda: (xs.relu_forward(xb)[0],), (np.maximum(hx, 0),))
    yield from _pair(
        f"relu_backward {tag}", dtype,
        lambda: (xs.relu_backward(xb, xs.relu_forward(xb)[1]),), (hx * (hx > 0),),
    )
    yield from _pair(
        f"affine_relu_forward {tag}", dtype, lambda: (xs.affine_relu_forward(xb, wb, bb)[0],), (a * active,)
    )
    yield from _pair(
        f"affine_relu_backward {tag}", dtype,
        lambda: xs.affine_relu_backward(db, xs.affine_relu_forward(xb, wb, bb)[1]),
        ((da @ hw.T).reshape(hx.shape), x2.T @ da, da.sum(0)),
    )


# --------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backends",
        help="comma-separated backends to check (default: every available one)",
    )
    parser.add_argument(
        "--engines",
        help="comma-separated engines: reference, fused, fused-row (CuPy) (default: every engine of "
             "each backend)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every failing case")


def enable_jax_float64() -> None:
    """JAX silently computes float64 inputs in float32 unless x64 is on."""
    import jax

    jax.config.update("jax_enable_x64", True)


def run(args: argparse.Namespace) -> int:
    import xsoftmax as xs

    from .._backend import BACKENDS

    status = xs.available_backends()
    wanted = None if args.backends is None else comma_list(args.backends)
    unknown = [b for b in wanted or () if b not in BACKENDS]
    if unknown:
        print(f"xsoftmax check: unknown backend(s) {', '.join(unknown)}; known: {', '.join(BACKENDS)}",
              file=sys.stderr)
        return 2
    engines = None if args.engines is None else comma_list(args.engines)
    if engines is not None and not set(engines) <= {"reference", "fused", "fused-row"}:
        print(f"xsoftmax check: --engines must list reference, fused and/or fused-row, got {args.engines}",
              file=sys.stderr)
        return 2

    unusable = [f"{b}: {status[b]}" for b in wanted or () if status[b] != "ok"]
    if wanted and len(unusable) == len(wanted):  # nothing asked for can run: one line, no table
        print(f"xsoftmax check: no backend to check: {'; '.join(unusable)}", file=sys.stderr)
        return 2
    tallies: dict[tuple[str, str, str], Tally] = {}
    skipped: list[str] = []
    for backend in wanted or BACKENDS:
        if status[backend] != "ok":
            skipped.append(f"{backend}: {status[backend]}")
            continue
        if backend == "jax":
            enable_jax_float64()
        print(f"checking {backend} ...", file=sys.stderr, flush=True)
        for engine in engines_for(backend):
            if engines is not None and engine not in engines:
                continue
            tally = tallies.setdefault((backend, engine, "softmax_loss"), Tally())
            _run_checks(tally, backend, loss_checks(backend, engine, args.seed))
            _run_checks(tally, backend, target_checks(backend, engine, args.seed))
        for group, checks in (("primitives", primitive_checks), ("layers", layer_checks)):
            tally = tallies.setdefault((backend, "-", group), Tally())
            _run_checks(tally, backend, checks(backend, args.seed))
        skipped += [f"{backend} {dtype} inputs: the namespace has no {dtype}"
                    for dtype in CHECKED_DTYPES if not _has_dtype(backend, dtype)]

    _print_table(tallies, skipped, verbose=args.verbose)
    if not tallies:
        print("xsoftmax check: nothing was checked", file=sys.stderr)
        return 1
    return 1 if any(t.failures for t in tallies.values()) else 0


def _print_table(tallies: dict[tuple[str, str, str], Tally], skipped: list[str], *, verbose: bool) -> None:
    header = ("backend", "engine", "checks", "worst |err|", "err/tol", "status", "worst case")
    rows = [
        (
            backend,
            engine if group == "softmax_loss" else f"({group})",
            str(t.checks),
            f"{t.worst_err:.2e}",
            f"{t.worst_ratio:.3f}",
            "PASS" if not t.failures else f"FAIL ({len(t.failures)})",
            t.worst_case,
        )
        for (backend, engine, group), t in tallies.items()
    ]
    for line in format_table(header, rows):
        print(line)
    for (backend, engine, group), t in tallies.items():
        limit = None if verbose else 5
        for line in t.failures[:limit]:
            print(f"FAIL {backend}/{engine}/{group}: {line}")
        if limit is not None and len(t.failures) > limit:
            print(f"     ... {len(t.failures) - limit} more (use -v)")
    for line in skipped:
        print(f"skipped {line}")
    failed = sum(len(t.failures) for t in tallies.values())
    total = sum(t.checks for t in tallies.values())
    print(f"{total - failed}/{total} checks passed" + ("" if failed == 0 else f"; {failed} FAILED"))
