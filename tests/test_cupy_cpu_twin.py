"""The CuPy engine's kernel strings, run on the CPU, agree with the reference engine.

Each kernel's own text (:mod:`xsoftmax._engines._cuda_source`) is built with
g++ by :mod:`_cpu_twin` and launched by the engine's own driver
(:func:`xsoftmax._engines.cupy.fused_softmax_loss`), so everything the GPU
path does except CuPy's launch machinery runs here on NumPy buffers, and is
compared with ``engine="reference"`` on the same inputs to the rounding of
the dtype. Mutated copies of the strings must fail the same comparison.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import xsoftmax as xs
from xsoftmax._engines._cuda_source import GRAD, KERNELS, LSE, PREAMBLE
from xsoftmax._engines.cupy import fused_softmax_loss
from xsoftmax._validate import check_loss_inputs, check_out

from _cpu_twin import TwinLauncher, TwinUnavailable, compiler
from _helpers import ENGINE_TOLERANCES

pytestmark = pytest.mark.cpu_twin

DTYPES = ("float32", "float64", "float16")
REDUCTIONS = ("mean", "sum", "none")
OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore_index": 2},
    "smooth": {"label_smoothing": 0.2},
    "all": {"weight": True, "ignore_index": 2, "label_smoothing": 0.1},
}
TOL = ENGINE_TOLERANCES


@pytest.fixture(scope="session")
def twin_dir(tmp_path_factory):
    try:
        compiler()
    except TwinUnavailable as exc:
        pytest.skip(str(exc))
    return str(tmp_path_factory.mktemp("cpu_twin"))


def fused(launcher, scores, y, *, out=None, **kw):
    """``softmax_loss(..., engine="fused")`` with the twin in place of the GPU."""
    opts = {"reduction": "mean", "weight": None, "ignore_index": None, "label_smoothing": 0.0}
    inp = check_loss_inputs(scores, y, engine="fused", **{**opts, **kw})
    if out is not None:
        check_out(inp.xp, out, scores)
    return fused_softmax_loss(inp, launcher, out=out)


def assert_like_reference(got, scores, y, **kw):
    loss, d = got
    ref_loss, ref_d = xs.softmax_loss(scores, y, engine="reference", **kw)
    rtol, atol = TOL[scores.dtype.name]
    for name, a, b in (("loss", loss, ref_loss), ("dscores", d, ref_d)):
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{name}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        )
        b64 = np.asarray(b, dtype=np.float64)
        finite = b64[np.isfinite(b64)]
        scale = float(np.max(np.abs(finite))) if finite.size else 1.0
        np.testing.assert_allclose(
            np.asarray(a, dtype=np.float64), b64, rtol=rtol, atol=atol * max(scale, 1e-30),
            err_msg=f"{name} differs from the reference engine",
        )


def make_inputs(dtype, options, *, n=37, c=13, seed=0, label_dtype=np.int32):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, c)) * 3
    s[1] += 1e4  # large but finite logits: the max shift must make them harmless
    s[2] -= 1e4
    s[3, ::2] += 1e4  # ±1e4 within one row
    s = s.astype(dtype)
    y = rng.integers(0, c, n).astype(label_dtype)
    kw = {k: v for k, v in options.items() if k != "weight"}
    if options.get("weight"):
        kw["weight"] = (rng.random(c) + 0.25).astype(dtype)
    return s, y, kw


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_twin_matches_reference(twin_dir, dtype, reduction, option):
    labels = np.int64 if reduction == "sum" else np.int32
    s, y, kw = make_inputs(dtype, OPTIONS[option], label_dtype=labels)
    launcher = TwinLauncher(twin_dir)
    got = fused(launcher, s, y, reduction=reduction, **kw)
    assert_like_reference(got, s, y, reduction=reduction, **kw)
    # One read for the row statistics, one read + write for the gradient, and
    # a second read only when label smoothing needs u.
    smooth = kw.get("label_smoothing", 0) > 0
    assert launcher.calls == (["lse", "smooth", "grad"] if smooth else ["lse", "grad"])


def adversarial(dtype, label_dtype=np.int64):
    """Rows that break naive kernels: ±1e4 logits, −inf masks, −inf on the target,
    a whole −inf row (ignored), NaN, +inf, and one-element-per-partial rows."""
    s, y, _ = make_inputs(dtype, {}, n=12, c=9, seed=3, label_dtype=label_dtype)
    s[4, [0, 3, 5]] = -np.inf
    y[4] = 1  # masked row, finite target
    s[5, y[5]] = -np.inf  # the target itself masked: loss +inf
    s[6] = -np.inf  # nothing finite at all: only sane when the row is ignored
    y[6] = -100
    s[7, 2] = np.nan
    s[8, 4] = np.inf
    s[9] = 0.0  # all equal: the max is reached by every partial
    return s, y


# NaN, ±inf and 0/0 are the point here; NumPy's warnings about them are not.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("partials", [1, 4, 32])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_twin_adversarial_rows(twin_dir, dtype, partials):
    s, y = adversarial(dtype)
    w = np.linspace(0.5, 2.0, s.shape[1]).astype(dtype)
    for kw in (
        {"reduction": "none", "ignore_index": -100},
        {"reduction": "none", "ignore_index": -100, "weight": w, "label_smoothing": 0.3},
    ):
        got = fused(TwinLauncher(twin_dir, partials=partials), s, y, **kw)
        assert_like_reference(got, s, y, **kw)
    # Only the finite rows in a reduced loss: stable, finite, and equal.
    keep = np.isfinite(s).all(axis=1)
    for reduction in ("mean", "sum"):
        kw = {"reduction": reduction, "weight": w, "label_smoothing": 0.1}
        got = fused(TwinLauncher(twin_dir, partials=partials), s[keep], y[keep], **kw)
        assert np.isfinite(got[0]) and np.isfinite(got[1]).all()
        assert_like_reference(got, s[keep], y[keep], **kw)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_twin_all_rows_ignored(twin_dir, dtype):
    s, y, _ = make_inputs(dtype, {}, n=5, c=4)
    y[:] = 3
    loss, d = fused(TwinLauncher(twin_dir), s, y, ignore_index=3)
    assert np.isnan(loss) and not np.any(d)  # 0/0 like PyTorch; exactly zero gradient
    assert_like_reference((loss, d), s, y, ignore_index=3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_twin_out_buffer_and_in_place(twin_dir, dtype):
    s, y, kw = make_inputs(dtype, OPTIONS["all"])
    original = s.copy()
    buf = np.full_like(s, 7)
    loss, d = fused(TwinLauncher(twin_dir), s, y, out=buf, **kw)
    assert d is buf
    np.testing.assert_array_equal(s, original)  # inputs are never modified
    assert_like_reference((loss, d), s, y, **kw)

    work = s.copy()
    loss2, d2 = fused(TwinLauncher(twin_dir), work, y, out=work, **kw)
    assert d2 is work  # the scores were overwritten by their gradient
    np.testing.assert_array_equal(d2, d)
    np.testing.assert_array_equal(loss2, loss)


@pytest.mark.parametrize("layout", ["column-slice", "transposed", "reversed"])
def test_cpu_twin_non_contiguous(twin_dir, layout):
    s, y, kw = make_inputs("float32", OPTIONS["all"], n=20, c=11)
    base = np.zeros((40, 40), dtype=np.float32)
    if layout == "column-slice":
        base[::2, 5:38:3][:, :11] = s  # rows and columns strided
        view = base[::2, 5:38:3][:, :11]
        labels = np.repeat(y, 2)[::2]  # strided labels too
    elif layout == "transposed":
        view = np.asfortranarray(s)
        labels = y
    else:
        view = s[::-1, ::-1].copy()[::-1, ::-1]  # negative strides
        labels = y[::-1].copy()[::-1]
    np.testing.assert_array_equal(view, s)
    assert not view.flags.c_contiguous
    out = np.empty((11, 20), dtype=np.float32).T  # a transposed output buffer
    got = fused(TwinLauncher(twin_dir), view, labels, out=out, **kw)
    assert got[1] is out
    assert_like_reference(got, s, y, **kw)


@pytest.mark.parametrize("label_dtype", [np.uint8, np.int16, np.int32, np.int64])
def test_cpu_twin_label_dtypes(twin_dir, label_dtype):
    s, y, kw = make_inputs("float32", OPTIONS["all"], label_dtype=label_dtype)
    got = fused(TwinLauncher(twin_dir), s, y, **kw)
    assert_like_reference(got, s, y.astype(np.int64), **kw)


MUTATIONS = {
    # gradient without the log-sum-exp: unnormalised probabilities
    "grad-operation": ("grad", "operation", GRAD.operation, " - l[row]", ""),
    # the target logit gathered one class off
    "lse-map": ("lse", "map_expr", LSE.map_expr, "k == y", "k == y + 1"),
    # partial sums merged without rescaling to the common max
    "preamble-merge": (None, None, PREAMBLE, "d * exp(m_old - m_new)", "d"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_cpu_twin_catches_an_altered_kernel(twin_dir, mutation):
    key, field, text, old, new = MUTATIONS[mutation]
    assert old in text, "the mutated fragment is gone from the kernel: update this test"
    specs, preamble = dict(KERNELS), PREAMBLE
    if key is None:
        preamble = PREAMBLE.replace(old, new)
    else:
        specs[key] = specs[key]._replace(**{field: text.replace(old, new)})
    s, y, kw = make_inputs("float32", OPTIONS["all"])
    launcher = TwinLauncher(twin_dir, partials=4, specs=specs, preamble=preamble)
    got = fused(launcher, s, y, reduction="none", **kw)
    with pytest.raises(AssertionError, match="differs from the reference"):
        assert_like_reference(got, s, y, reduction="none", **kw)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cpu_twin_many_classes(twin_dir, dtype):
    # 4096 classes: a float16 running sum would have lost the loss; the
    # kernels accumulate in float32 like the reference engine.
    s, y, kw = make_inputs(dtype, OPTIONS["smooth"], n=6, c=4096, seed=5)
    got = fused(TwinLauncher(twin_dir, partials=32), s, y, **kw)
    assert_like_reference(got, s, y, **kw)


def test_cpu_twin_importing_the_engine_does_not_import_cupy():
    code = "import sys, xsoftmax._engines.cupy; sys.exit('cupy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- probability targets, z-loss and softcap (issue 15), against the float64 oracle ---

from _cuda_cases import assert_like_oracle, cases, loss_inputs, make_case  # noqa: E402

from xsoftmax._engines._cuda_source import GRAD_CAP, PROB  # noqa: E402


def twin_fused(launcher, scores, y, *, out=None, **kw):
    """The fused driver on a hand-built ``LossInputs`` (the new keywords included)."""
    return fused_softmax_loss(loss_inputs(scores, y, **kw), launcher, out=out)


def expected_launches(target, kw):
    sfx = "_cap" if kw.get("softcap") is not None else ""
    if target == "probs":
        return ["lse" + sfx, "prob" + sfx, "grad_prob" + sfx]
    smooth = ["smooth" + sfx] if kw.get("label_smoothing") else []
    return ["lse" + sfx, *smooth, "grad" + sfx]


TARGET_CASES = [
    *(("float32", r, *case) for case in cases() for r in REDUCTIONS),
    *((d, r, t, "all", e) for d in ("float16", "float64") for r in ("mean", "none")
      for t in ("labels", "probs") for e in ("z+cap", "cap" if t == "labels" else "none")),
]


@pytest.mark.parametrize("dtype,reduction,target,option,extra", TARGET_CASES,
                         ids=["-".join(c) for c in TARGET_CASES])
def test_cpu_twin_targets_match_oracle(twin_dir, dtype, reduction, target, option, extra):
    s, y, kw = make_case(dtype, target, option, extra)
    launcher = TwinLauncher(twin_dir)
    original = s.copy(), y.copy()
    got = twin_fused(launcher, s, y, reduction=reduction, **kw)
    assert_like_oracle(got, s, y, reduction=reduction, **kw)
    np.testing.assert_array_equal(s, original[0])
    np.testing.assert_array_equal(y, original[1])
    # softcap=None and z_loss=0 add no pass; a probability row is one more read (with q).
    assert launcher.calls == expected_launches(target, kw)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("partials", [1, 32])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_twin_targets_adversarial_rows(twin_dir, dtype, partials):
    # ±1e4 under a softcap stay finite (z = ±c, factor 0); -inf masks become -c; a -inf logit
    # where q = 0 is a NaN loss with a finite gradient (torch); C = 1; C not a multiple of 32.
    for c in (1, 45):
        for target in ("labels", "probs"):
            s, y, kw = make_case(dtype, target, "all", "z+cap", n=12, c=c, seed=4)
            if c > 1:
                s[4, [0, 3, 5]] = -np.inf
                s[6, :] = 1e4
                s[7, 1] = -1e4
                if target == "probs":
                    y[4, [0, 3]] = 0
            got = twin_fused(TwinLauncher(twin_dir, partials=partials), s, y, reduction="none", **kw)
            assert np.isfinite(got[1]).all()
            # C = 1: the CE gradient c p − a − b w is 0 up to rounding, and so the whole scale.
            floor = 1.0 if c == 1 else 1e-30
            assert_like_oracle(got, s, y, reduction="none", floor=floor, **kw)
            # Without a cap the masks stay -inf: a probability row with q = 0 there has a NaN loss.
            kw.pop("softcap")
            if dtype == "float16":
                kw.pop("z_loss")  # ζ lse² at lse = 1e4 is 5e6: past float16's range
            got = twin_fused(TwinLauncher(twin_dir, partials=partials), s, y, reduction="none", **kw)
            assert_like_oracle(got, s, y, reduction="none", floor=floor, **kw)
            if c > 1 and target == "probs":
                # Smoothing mixes q' = (1 - ε) q + ε/C > 0 first (torch): +inf, finite gradient;
                # without it, q = 0 at the mask is 0 · inf = NaN, the gradient still finite.
                assert np.isposinf(got[0][4]) and np.isfinite(got[1][4]).all()
                kw["label_smoothing"] = 0.0
                got = twin_fused(TwinLauncher(twin_dir, partials=partials), s, y, reduction="none", **kw)
                assert_like_oracle(got, s, y, reduction="none", **kw)
                assert np.isnan(got[0][4]) and np.isfinite(got[1][4]).all()


@pytest.mark.parametrize("target", ["labels", "probs"])
def test_cpu_twin_targets_out_strided_and_in_place(twin_dir, target):
    s, y, kw = make_case("float32", target, "all", "z+cap", n=20, c=11)
    ref = twin_fused(TwinLauncher(twin_dir), s, y, **kw)
    # Transposed scores and probabilities, a transposed out= buffer.
    out = np.empty((11, 20), dtype=np.float32).T
    ys = np.asfortranarray(y) if target == "probs" else y
    got = twin_fused(TwinLauncher(twin_dir), np.asfortranarray(s), ys, out=out, **kw)
    assert got[1] is out
    np.testing.assert_array_equal(got[1], ref[1])
    assert_like_oracle(got, s, y, **kw)
    # out=scores: the gradient overwrites the scores.
    work = s.copy()
    loss, d = twin_fused(TwinLauncher(twin_dir), work, y, out=work, **kw)
    assert d is work
    np.testing.assert_array_equal(d, ref[1])
    np.testing.assert_array_equal(loss, ref[0])


def test_cpu_twin_probabilities_of_another_dtype(twin_dir):
    # float16 scores with float64 probabilities: q is read as float32 inside the kernels.
    s, y, kw = make_case("float16", "probs", "all", "z+cap", q_dtype="float64")
    got = twin_fused(TwinLauncher(twin_dir), s, y, reduction="sum", **kw)
    assert_like_oracle(got, s, y, reduction="sum", **kw)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cpu_twin_z_loss_all_rows_ignored(twin_dir):
    s, y, kw = make_case("float32", "labels", "ignore", "z")
    y[:] = 2
    loss, d = twin_fused(TwinLauncher(twin_dir), s, y, **kw)
    assert np.isnan(loss) and not np.any(d)  # 0/0 like torch; exactly zero gradient
    loss, d = twin_fused(TwinLauncher(twin_dir), s, y, reduction="sum", **kw)
    assert loss == 0 and not np.any(d)


TARGET_MUTATIONS = {
    # the softcap's chain factor left out of the gradient
    "grad-cap-factor": ("grad_cap", "operation", GRAD_CAP.operation, "xsoftmax_softcap_grad(", "("),
    # Q without the class weights
    "prob-weights": ("prob", "map_expr", PROB.map_expr, ", w, (F)q, qa, qb)", ", (F)1, (F)q, qa, qb)"),
}


@pytest.mark.parametrize("mutation", sorted(TARGET_MUTATIONS))
def test_cpu_twin_targets_catch_an_altered_kernel(twin_dir, mutation):
    key, field, text, old, new = TARGET_MUTATIONS[mutation]
    assert old in text, "the mutated fragment is gone from the kernel: update this test"
    specs = dict(KERNELS)
    specs[key] = specs[key]._replace(**{field: text.replace(old, new)})
    target, extra = ("probs", "none") if key == "prob" else ("labels", "cap")
    s, y, kw = make_case("float32", target, "all", extra)
    got = twin_fused(TwinLauncher(twin_dir, specs=specs), s, y, reduction="none", **kw)
    with pytest.raises(AssertionError, match="differs from the oracle"):
        assert_like_oracle(got, s, y, reduction="none", **kw)


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 4, 3, 5)], ids=["k1", "k2"])
@pytest.mark.parametrize("target", ["labels", "probs"])
def test_cpu_twin_k_dim_through_the_public_layer(twin_dir, monkeypatch, target, shape):
    # Per-sample (d, C) views with class stride d and the global D, V: no transposed copy.
    from _cuda_cases import kdim_case, public_through

    import xsoftmax._batch as batch

    monkeypatch.setattr(batch, "GROUP_ELEMENTS", 1)  # each sample on its own strided view
    launcher = TwinLauncher(twin_dir)
    seen = []

    def engine(inp, /, *, out=None):
        seen.append(inp.scores.strides[1] // inp.scores.itemsize)
        return fused_softmax_loss(inp, launcher, out=out)

    public_through(monkeypatch, engine)
    s, y, kw = kdim_case("float32", target, shape)
    for reduction in REDUCTIONS:
        got = xs.softmax_loss(s, y, reduction=reduction, engine="fused", **kw)
        assert_like_oracle(got, s, y, reduction=reduction, **kw)
    assert set(seen) == {int(np.prod(shape[2:]))}  # the class stride d: strided views, not copies
