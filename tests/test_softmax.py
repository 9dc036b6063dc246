"""softmax_loss against a float64 loop reference and torch's cross_entropy, on every backend."""

from __future__ import annotations

import functools
import itertools
import math
import warnings

import numpy as np
import pytest

import xsoftmax as xs
from xsoftmax._backend import backend_name
from xsoftmax._engines import has_fused

from _helpers import (
    TOLERANCES,
    assert_close,
    dtype_of,
    has_float16,
    have_torch,
    is_backend,
    make_problem,
    no_compute,
    on,
    ref_softmax_loss,
    torch_cross_entropy,
)

REDUCTIONS = ("mean", "sum", "none")
N, C = 7, 5
WEIGHT = np.array([0.5, 2.0, 1.0, 0.25, 1.5])
#: None; a real class (rows with label 1 are ignored); torch's default -100.
IGNORES = (None, 1, -100)
SMOOTHINGS = (0.0, 0.1, 1.0)


def _labels(ignore_index):
    y = np.array([0, 1, 4, 2, 1, 3, 0])
    if ignore_index == -100:
        y[[2, 5]] = -100
    return y


def _scores(seed=0):
    return np.random.default_rng(seed).standard_normal((N, C)) * 2.0


def _check(xp, scores, y, *, dtype=None, rtol=None, atol=None, engine="auto", **kw):
    """Run softmax_loss on ``xp`` and compare with the loop reference and torch."""
    s = on(xp, scores, dtype)
    weight = kw.pop("weight", None)
    w = None if weight is None else on(xp, weight, s.dtype)
    loss, d = xs.softmax_loss(s, on(xp, y), weight=w, engine=engine, **kw)
    ref_loss, ref_d = ref_softmax_loss(scores, y, weight=weight, **kw)
    assert_close(loss, ref_loss, xp, dtype=s.dtype, like=s, rtol=rtol, atol=atol)
    assert_close(d, ref_d, xp, dtype=s.dtype, like=s, rtol=rtol, atol=atol)
    expected_shape = (scores.shape[0],) if kw.get("reduction") == "none" else ()
    assert tuple(loss.shape) == expected_shape
    assert tuple(d.shape) == scores.shape
    if have_torch():
        t_loss, t_d = torch_cross_entropy(scores, y, weight=weight, **kw)
        assert_close(loss, t_loss, xp, rtol=rtol, atol=atol)
        assert_close(d, t_d, xp, rtol=rtol, atol=atol)
    return loss, d


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_option_combination(xp, reduction):
    """reduction × weight × ignore_index (None, inside [0, C), -100) × label_smoothing.

    Where "auto" picks a backend's fused engine, the generic engine is checked too.
    """
    engines = ("auto", "reference") if has_fused(backend_name(xp)) else ("auto",)
    for engine, use_weight, ignore_index, eps in itertools.product(
        engines, (False, True), IGNORES, SMOOTHINGS
    ):
        _check(
            xp,
            _scores(),
            _labels(ignore_index),
            reduction=reduction,
            weight=WEIGHT if use_weight else None,
            ignore_index=ignore_index,
            label_smoothing=eps,
            engine=engine,
        )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_plain_loss_by_dtype(xp, dtype):
    scores, y = make_problem(np.random.default_rng(1), 16, 10)
    _check(xp, scores, y, dtype=getattr(xp, dtype))


def test_ignore_index_inside_class_range(xp):
    """ignore_index = 2 is a real class: its rows vanish, the class still gets gradient."""
    scores = _scores(3)
    y = np.array([2, 0, 2, 1, 4, 2, 3])
    loss, d = _check(xp, scores, y, ignore_index=2)
    d = xs.to_numpy(d)
    assert np.all(d[[0, 2, 5]] == 0.0)
    # rows that are not ignored still push class 2 down (p_2 > 0 there)
    assert np.all(d[[1, 3, 4, 6], 2] > 0)


@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_all_rows_ignored(xp, use_weight, eps):
    """"mean" of nothing: torch gives a NaN loss and an all-zero gradient; so do we."""
    scores = _scores(4)
    y = np.full(N, -100)
    weight = WEIGHT if use_weight else None
    for reduction in REDUCTIONS:
        s = on(xp, scores)
        w = None if weight is None else on(xp, weight)
        loss, d = xs.softmax_loss(
            s, on(xp, y), reduction=reduction, weight=w, ignore_index=-100, label_smoothing=eps
        )
        loss, d = xs.to_numpy(loss), xs.to_numpy(d)
        opts = dict(reduction=reduction, weight=weight, ignore_index=-100, label_smoothing=eps)
        outside = [ref_softmax_loss(scores, y, **opts)]
        if have_torch():
            outside.append(torch_cross_entropy(scores, y, **opts))
        for any_loss, any_d in [(loss, d), *outside]:  # ours, the loop reference, torch
            if reduction == "mean":
                assert np.isnan(any_loss)
            else:
                np.testing.assert_array_equal(any_loss, 0.0)
            np.testing.assert_array_equal(any_d, 0.0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_zero_weight_classes_only_mean_is_nan_like_torch(xp, label_smoothing):
    """Σ w_{y_i} = 0 with rows that are not ignored: torch's 0/0 gives NaN loss and gradient.

    With smoothing the smoothing term alone is finite, but torch divides the
    NLL term ``0/0`` separately, so the loss is still NaN (not ``+inf``).
    """
    scores = _scores(5)[:3]
    y = np.array([0, 1, -100])
    weight = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    opts = dict(ignore_index=-100, label_smoothing=label_smoothing)
    loss, d = xs.softmax_loss(on(xp, scores), on(xp, y), weight=on(xp, weight), **opts)
    d = xs.to_numpy(d)
    assert np.isnan(xs.to_numpy(loss))
    assert np.all(np.isnan(d[:2])) and np.all(d[2] == 0.0)
    if have_torch():
        t_loss, t_d = torch_cross_entropy(scores, y, weight=weight, **opts)
        assert np.isnan(t_loss) and np.all(np.isnan(t_d[:2])) and np.all(t_d[2] == 0.0)


@pytest.mark.parametrize("engine", ["reference", "auto"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_numpy_loss_is_a_0d_array_not_a_scalar(engine, reduction):
    """The reduced loss is a 0-d array (NumPy's reductions return np.generic)."""
    loss, _ = xs.softmax_loss(_scores(), np.arange(N) % C, reduction=reduction, engine=engine)
    assert isinstance(loss, np.ndarray) and loss.shape == ()


def test_single_class_and_single_row(xp):
    """C = 1: p = 1, loss 0, gradient 0; N = 1 ("mean" is the row's own loss)."""
    loss, d = _check(xp, np.array([[3.0], [-2.0]]), np.array([0, 0]))
    assert float(xs.to_numpy(loss)) == 0.0
    _check(xp, np.array([[0.3, -1.2, 2.0]]), np.array([2]))
    _check(xp, np.array([[1.0, 1.0]]), np.array([1]), label_smoothing=0.5)


@pytest.mark.parametrize("magnitude", [1e4, -1e4, 1e30])
def test_extreme_logits_stay_finite(xp, magnitude):
    """Logits ±1e4 (and ±1e30) apart, float64 and float32: finite loss, reference values."""
    scores = np.array([[magnitude, 0.0, -magnitude], [0.0, magnitude, 1.0], [1.0, 2.0, 3.0]])
    y = np.array([2, 1, 0])
    for dtype in (xp.float32, xp.float64):
        loss, d = _check(xp, scores, y, dtype=dtype, reduction="none")
        assert np.all(np.isfinite(xs.to_numpy(loss))) and np.all(np.isfinite(xs.to_numpy(d)))


def test_minus_inf_mask(xp):
    """−inf logits (masked classes) give p = 0 and zero gradient there; a finite loss."""
    scores = np.array(
        [[-np.inf, 1.0, 2.0, -np.inf], [0.5, -np.inf, -np.inf, -np.inf], [1.0, 2.0, 3.0, 4.0]]
    )
    y = np.array([2, 0, 3])
    for reduction in REDUCTIONS:
        loss, d = _check(xp, scores, y, reduction=reduction)
        d = xs.to_numpy(d)
        assert np.all(np.isfinite(xs.to_numpy(loss)))
        assert np.all(d[np.isneginf(scores)] == 0.0)
    # row 1 has a single unmasked class, which is the target: loss exactly 0
    loss, _ = xs.softmax_loss(on(xp, scores), on(xp, y), reduction="none")
    assert xs.to_numpy(loss)[1] == 0.0


def test_minus_inf_on_target_is_inf_like_torch(xp):
    """Masking out the target makes its −log p infinite (torch agrees); the gradient stays finite."""
    scores = np.array([[-np.inf, 1.0, 2.0], [1.0, 2.0, 3.0]])
    y = np.array([0, 1])
    loss, d = _check(xp, scores, y, reduction="none")
    assert np.isposinf(xs.to_numpy(loss)[0])
    assert np.all(np.isfinite(xs.to_numpy(d)))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log(0), −inf − (−inf): NaN is the answer
def test_fully_masked_row_is_nan_like_torch(xp):
    """A row with every class at −inf has no possible class: NaN loss and gradient (torch too);
    the other rows are untouched."""
    scores = np.array([[-np.inf, -np.inf, -np.inf], [1.0, 2.0, 3.0]])
    y = np.array([1, 0])
    loss, d = _check(xp, scores, y, reduction="none")
    assert np.isnan(xs.to_numpy(loss)[0]) and np.all(np.isnan(xs.to_numpy(d)[0]))
    assert np.all(np.isfinite(xs.to_numpy(d)[1]))


def test_minus_inf_with_label_smoothing_is_inf_like_torch(xp):
    """Label smoothing puts mass ε/C on every class, so a −inf logit gives an infinite loss."""
    scores = np.array([[-np.inf, 1.0, 2.0], [1.0, 2.0, 3.0]])
    y = np.array([1, 1])
    loss, _ = _check(xp, scores, y, reduction="none", label_smoothing=0.1)
    loss = xs.to_numpy(loss)
    assert np.isposinf(loss[0]) and np.isfinite(loss[1])


def test_large_class_count(xp):
    scores, y = make_problem(np.random.default_rng(7), 3, 3000, scale=10.0)
    _check(xp, scores, y, label_smoothing=0.05)


def test_float16_is_computed_in_float32(xp):
    """70000 zero logits: Σ exp = 70000 overflows float16 (max 65504); the loss is log 70000."""
    if not has_float16(xp):
        pytest.skip(f"{backend_name(xp)} has no float16")
    scores = np.zeros((1, 70000))
    f16 = dtype_of(xp, "float16")
    loss, d = xs.softmax_loss(on(xp, scores, "float16"), on(xp, np.array([3])))
    assert loss.dtype == f16 and d.dtype == f16
    assert_close(loss, math.log(70000.0), xp, dtype=f16)
    assert_close(d[0, :3], np.full(3, 1 / 70000), xp, atol=1e-7)


def test_float16_matches_reference(xp):
    if not has_float16(xp):
        pytest.skip(f"{backend_name(xp)} has no float16")
    rng = np.random.default_rng(8)
    scores, y = make_problem(rng, 6, 9)
    scores = scores.astype(np.float16).astype(np.float64)  # representable values
    _check(xp, scores, y, dtype="float16", weight=rng.uniform(0.5, 2, 9), label_smoothing=0.1)


def test_bfloat16_on_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    scores, y = make_problem(rng, 5, 6)
    s = torch.tensor(scores, dtype=torch.bfloat16)
    exact = s.double().numpy()
    loss, d = xs.softmax_loss(s, torch.tensor(y), reduction="none")
    assert loss.dtype == torch.bfloat16 and d.dtype == torch.bfloat16
    ref_loss, ref_d = ref_softmax_loss(exact, y, reduction="none")
    r, a = TOLERANCES["bfloat16"]
    np.testing.assert_allclose(loss.double().numpy(), ref_loss, rtol=r, atol=a)
    np.testing.assert_allclose(d.double().numpy(), ref_d, rtol=r, atol=a)


def test_label_dtypes(xp):
    """int8 / uint8 / int32 labels give the same result; narrow labels with C > 255 do not wrap."""
    scores, _ = make_problem(np.random.default_rng(10), 4, 300)
    y = np.array([5, 120, 0, 77])  # fit int8; 300 classes do not
    _, ref_d = ref_softmax_loss(scores, y)
    for dt in ("int8", "uint8", "int16", "int32", "int64"):
        _, d = xs.softmax_loss(on(xp, scores), on(xp, y, dt))
        assert_close(d, ref_d, xp)
    # ignore_index=-100 does not fit uint8: those labels are simply never ignored
    _, d = xs.softmax_loss(on(xp, scores), on(xp, y, "uint8"), ignore_index=-100)
    assert_close(d, ref_d, xp)


@pytest.mark.parametrize("dt,c", [("uint8", 256), ("int8", 128)])
def test_narrow_labels_up_to_the_last_class(xp, dt, c):
    """The largest label a dtype holds is a valid class when C = that label + 1 (no wrap of C)."""
    scores, _ = make_problem(np.random.default_rng(12), 3, c)
    y = np.array([c - 1, 0, c - 2])
    _, ref_d = ref_softmax_loss(scores, y)
    _, d = xs.softmax_loss(on(xp, scores), on(xp, y, dt))
    assert_close(d, ref_d, xp)


@pytest.mark.parametrize("engine", ["auto", "reference"])
def test_engines_agree(xp, engine):
    scores, y = make_problem(np.random.default_rng(11), 12, 6)
    loss, d = xs.softmax_loss(on(xp, scores), on(xp, y), engine=engine, label_smoothing=0.1)
    ref_loss, ref_d = ref_softmax_loss(scores, y, label_smoothing=0.1)
    assert_close(loss, ref_loss, xp)
    assert_close(d, ref_d, xp)


def test_fused_engine_or_clear_error(xp):
    scores, y = make_problem(np.random.default_rng(12), 6, 4)
    if not has_fused(backend_name(xp)):
        with pytest.raises(ValueError, match=r"engine='fused' is not available for"):
            xs.softmax_loss(on(xp, scores), on(xp, y), engine="fused")
        return
    loss, d = xs.softmax_loss(on(xp, scores), on(xp, y), engine="fused")
    ref_loss, ref_d = ref_softmax_loss(scores, y)
    assert_close(loss, ref_loss, xp, rtol=1e-7, atol=1e-9)
    assert_close(d, ref_d, xp, rtol=1e-7, atol=1e-9)


def test_out_receives_the_gradient(xp):
    if backend_name(xp) not in ("numpy", "torch", "cupy"):
        with pytest.raises(TypeError, match="out= needs a mutable array"):
            s = on(xp, np.zeros((2, 3)))
            xs.softmax_loss(s, on(xp, np.array([0, 1])), out=s)
        return
    scores, y = make_problem(np.random.default_rng(13), 5, 4)
    _, ref_d = ref_softmax_loss(scores, y)
    s = on(xp, scores)
    buf = on(xp, np.full((5, 4), 99.0))
    _, d = xs.softmax_loss(s, on(xp, y), out=buf)
    assert d is buf
    assert_close(buf, ref_d, xp)
    assert_close(s, scores, xp, rtol=0, atol=0)  # scores untouched
    # out=scores: the gradient overwrites the scores in place
    _, d = xs.softmax_loss(s, on(xp, y), out=s)
    assert_close(s, ref_d, xp)


# --------------------------------------------------------------------- JAX


def test_jax_jit_with_static_options():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    scores, y = make_problem(np.random.default_rng(14), 8, 5, ignore_index=-100, n_ignored=2)
    weight = np.linspace(0.5, 1.5, 5)
    s, yy, w = jnp.asarray(scores), jnp.asarray(y), jnp.asarray(weight)
    for reduction, eps in itertools.product(REDUCTIONS, (0.0, 0.2)):
        opts = dict(reduction=reduction, ignore_index=-100, label_smoothing=eps)
        jitted = jax.jit(functools.partial(xs.softmax_loss, **opts))
        loss, d = jitted(s, yy, weight=w)
        ref_loss, ref_d = ref_softmax_loss(scores, y, weight=weight, **opts)
        assert_close(loss, ref_loss, jnp)
        assert_close(d, ref_d, jnp)


def test_jax_jit_closure_and_grad_agrees_with_autodiff():
    """dscores equals jax.grad of the loss (an autodiff check with no reference code)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    scores, y = make_problem(np.random.default_rng(15), 6, 4)
    yy = jnp.asarray(y)

    @jax.jit
    def step(s):
        return xs.softmax_loss(s, yy, label_smoothing=0.1)

    loss, d = step(jnp.asarray(scores))

    def lse_loss(s):  # torch's definition written directly in jnp
        logp = jax.nn.log_softmax(s, axis=1)
        nll = -jnp.take_along_axis(logp, yy[:, None], axis=1)[:, 0]
        return jnp.mean(0.9 * nll + 0.1 * jnp.mean(-logp, axis=1))

    assert_close(loss, float(lse_loss(jnp.asarray(scores))), jnp)
    assert_close(d, np.asarray(jax.grad(lse_loss)(jnp.asarray(scores))), jnp)


def test_jax_jit_bad_label_poisons_with_nan():
    """Under a trace the labels cannot raise; the bad row's loss and gradient are NaN."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    scores = np.zeros((3, 4))
    y = jnp.asarray([0, 7, 2])
    loss, d = jax.jit(functools.partial(xs.softmax_loss, reduction="none"))(jnp.asarray(scores), y)
    loss, d = np.asarray(loss), np.asarray(d)
    assert np.isnan(loss[1]) and np.all(np.isnan(d[1]))
    np.testing.assert_allclose(loss[[0, 2]], math.log(4))
    # eager JAX raises like every other backend
    with pytest.raises(ValueError, match=r"y\[1\] = 7"):
        xs.softmax_loss(jnp.asarray(scores), y)


# --------------------------------------------------------------------- Dask


def test_dask_stays_lazy_and_matches():
    da = pytest.importorskip("dask.array")
    scores, y = make_problem(np.random.default_rng(16), 20, 6, ignore_index=-100, n_ignored=3)
    weight = np.linspace(0.5, 2.0, 6)
    s = da.from_array(scores, chunks=(7, 4))  # 3 row blocks, 2 column blocks
    yy = da.from_array(y, chunks=7)
    w = da.from_array(weight, chunks=6)
    results = []
    # Column chunks are kept: row states merge across them (no rechunk, no warning).
    with no_compute(), warnings.catch_warnings():
        warnings.simplefilter("error")
        for reduction, eps in itertools.product(REDUCTIONS, (0.0, 0.1)):
            opts = dict(reduction=reduction, ignore_index=-100, label_smoothing=eps)
            results.append((opts, xs.softmax_loss(s, yy, weight=w, **opts)))
    for opts, (loss, d) in results:
        assert isinstance(loss, da.Array) and isinstance(d, da.Array)
        assert d.chunks == s.chunks
        ref_loss, ref_d = ref_softmax_loss(scores, y, weight=weight, **opts)
        assert_close(loss, ref_loss, da)
        assert_close(d, ref_d, da)


def test_dask_bad_label_raises_at_compute_time():
    da = pytest.importorskip("dask.array")
    y = np.array([0, 1, 2, 3, 0, 1, 2, 9, 0, 1])
    s = da.zeros((10, 4), chunks=(3, 4))
    with no_compute():
        loss, d = xs.softmax_loss(s, da.from_array(y, chunks=3))
    with pytest.raises(ValueError, match=r"y\[7\] = 9"):
        loss.compute()
    with pytest.raises(ValueError, match=r"y\[7\] = 9"):
        d.compute()


def test_dask_unknown_row_count():
    """Rows filtered by a boolean mask have unknown (NaN) length until computed."""
    da = pytest.importorskip("dask.array")
    scores, y = make_problem(np.random.default_rng(17), 12, 4)
    keep = scores[:, 0] > 0
    s = da.from_array(scores, chunks=(5, 4))
    mask = s[:, 0] > 0
    with no_compute():
        loss, d = xs.softmax_loss(s[mask], da.from_array(y, chunks=5)[mask])
    ref_loss, ref_d = ref_softmax_loss(scores[keep], y[keep])
    np.testing.assert_allclose(float(loss.compute()), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(d.compute(), ref_d, rtol=1e-10, atol=1e-12)


def test_outputs_share_device_and_namespace(xp):
    scores, y = make_problem(np.random.default_rng(18), 4, 3)
    s = on(xp, scores, xp.float32)
    loss, d = xs.softmax_loss(s, on(xp, y))
    for out in (loss, d):
        assert backend_name(xs._backend.array_namespace(out)) == backend_name(xp)
        assert out.dtype == xp.float32
        if not is_backend(xp, "dask"):
            import array_api_compat

            assert array_api_compat.device(out) == array_api_compat.device(s)


@pytest.mark.parametrize(
    "kw", [{}, {"label_smoothing": 0.1, "ignore_index": 0, "reduction": "sum"}], ids=["plain", "options"]
)
def test_torch_autograd_through_the_loss_gives_dscores(kw):
    """Torch tensors that require grad: the results belong to torch's graph (torch semantics).

    ``loss.backward()`` then gives the gradient that ``dscores`` holds, and
    the loss is ``F.cross_entropy``'s; under ``torch.no_grad()`` nothing is
    recorded (docs/backends.md).
    """
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(7, 5, generator=gen, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 2])
    w = torch.rand(5, generator=gen)
    loss, d = xs.softmax_loss(s, y, weight=w, **kw)
    (grad,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(grad, d, rtol=1e-5, atol=1e-6)
    expected = torch.nn.functional.cross_entropy(s, y, weight=w, **kw)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        loss, d = xs.softmax_loss(s, y, weight=w, **kw)
    assert loss.grad_fn is None and d.grad_fn is None and not d.requires_grad
