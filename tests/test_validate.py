"""Bad input (a clear ValueError or TypeError naming the argument), no mutation, read-only inputs."""

from __future__ import annotations

import numpy as np
import pytest

import xsoftmax as xs
from xsoftmax._backend import backend_name
from xsoftmax._engines import has_fused

from _helpers import has_float16, on

S = np.random.default_rng(0).standard_normal((4, 3))
Y = np.array([0, 2, 1, 2])


def loss(xp, scores=S, y=Y, **kw):
    scores = on(xp, scores) if isinstance(scores, np.ndarray) else scores
    y = on(xp, y) if isinstance(y, np.ndarray) else y
    out = xs.softmax_loss(scores, y, **kw)
    xs.to_numpy(out[1])  # Dask checks labels at compute time
    return out


# ------------------------------------------------------------ shapes and dtypes


def test_scores_wrong_ndim(xp):
    with pytest.raises(ValueError, match=r"scores must have shape \(N, C\), \(N, C, d1, ..., dk\) or \(C,\)"):
        loss(xp, scores=S[0, 0], y=Y[0])
    with pytest.raises(ValueError, match=r"y must have shape \(1, 3\) \(scores \(1, 4, 3\) without the class"):
        loss(xp, scores=S[None])
    with pytest.raises(ValueError, match=r"y has the scores' shape \(4,\) but an integer dtype"):
        loss(xp, scores=S[:, 0])


def test_labels_wrong_ndim(xp):
    with pytest.raises(ValueError, match=r"y must be 1-D.*got shape \(4, 1\)"):
        loss(xp, y=Y[:, None])


def test_row_count_mismatch(xp):
    with pytest.raises(ValueError, match=r"scores has N = 4 rows, y has shape \(3,\)"):
        loss(xp, y=Y[:3])


def test_zero_classes(xp):
    with pytest.raises(ValueError, match=r"at least one class.*\(4, 0\)"):
        loss(xp, scores=np.zeros((4, 0)))


def test_integer_scores(xp):
    with pytest.raises(TypeError, match="scores must have a real floating dtype, got .*int"):
        loss(xp, scores=np.zeros((4, 3), dtype=np.int64))


def test_non_integer_labels(xp):
    with pytest.raises(TypeError, match=r"y must have an integer dtype, got .*bool"):
        loss(xp, y=Y > 0)
    # A floating y is read as probabilities: of the wrong shape, both shapes are named.
    with pytest.raises(ValueError, match=r"must have the scores' shape \(4, 3\), got shape \(4,\)"):
        loss(xp, y=Y.astype("float64"))


# ------------------------------------------------------------ label values


def test_out_of_range_label_names_row_and_value(xp):
    with pytest.raises(ValueError, match=r"y\[3\] = 7 is out of range: labels must be in \[0, 3\)"):
        loss(xp, y=np.array([0, 2, 1, 7]))


def test_negative_label(xp):
    with pytest.raises(ValueError, match=r"y\[1\] = -1 is out of range"):
        loss(xp, y=np.array([0, -1, 1, 2]))


def test_label_equal_to_c(xp):
    with pytest.raises(ValueError, match=r"y\[0\] = 3 is out of range"):
        loss(xp, y=np.array([3, 0, 0, 0]))


def test_out_of_range_label_mentions_ignore_index(xp):
    with pytest.raises(ValueError, match=r"y\[2\] = -1 .*ignore_index=-100"):
        loss(xp, y=np.array([0, -100, -1, 2]), ignore_index=-100)


def test_ignored_labels_outside_the_classes_pass(xp):
    """Labels in range or equal to an out-of-range ``ignore_index`` (min/max leave [0, C))."""
    loss(xp, y=np.array([0, -100, 2, 1]), ignore_index=-100)
    loss(xp, y=np.array([0, 7, 2, 1]), ignore_index=7)


def test_first_bad_row_is_reported(xp):
    with pytest.raises(ValueError, match=r"y\[1\] = 5 "):
        loss(xp, y=np.array([0, 5, 9, 2]))


# ------------------------------------------------------------ weight and options


def test_weight_wrong_shape(xp):
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\) = \(3,\), got shape \(4,\)"):
        loss(xp, weight=on(xp, np.ones(4)))
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\)"):
        loss(xp, weight=on(xp, np.ones((1, 3))))


def test_weight_wrong_dtype(xp):
    with pytest.raises(TypeError, match="weight must have a real floating dtype"):
        loss(xp, weight=on(xp, np.ones(3, dtype=np.int32)))


@pytest.mark.parametrize("reduction", ["avg", "MEAN", None, 1])
def test_bad_reduction(xp, reduction):
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\), got"):
        loss(xp, reduction=reduction)


@pytest.mark.parametrize("engine", ["gpu", "", None])
def test_bad_engine(xp, engine):
    with pytest.raises(ValueError, match="engine must be one of"):
        loss(xp, engine=engine)


def test_fused_engine_missing(xp):
    if has_fused(backend_name(xp)):
        pytest.skip(f"{backend_name(xp)} has a fused engine")
    with pytest.raises(ValueError, match=rf"engine='fused' is not available for {backend_name(xp)}"):
        loss(xp, engine="fused")


@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan"), float("inf")])
def test_label_smoothing_out_of_range(xp, eps):
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got"):
        loss(xp, label_smoothing=eps)


@pytest.mark.parametrize("eps", ["0.1", True, None, [0.1]])
def test_label_smoothing_wrong_type(xp, eps):
    with pytest.raises(TypeError, match="label_smoothing must be a float"):
        loss(xp, label_smoothing=eps)


@pytest.mark.parametrize("ignore", [1.0, "1", True])
def test_ignore_index_wrong_type(xp, ignore):
    with pytest.raises(TypeError, match="ignore_index must be an int or None"):
        loss(xp, ignore_index=ignore)


# ------------------------------------------------------------ namespaces and non-arrays


def test_mixed_namespaces_name_both():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"scores is a numpy array but y is a torch array"):
        xs.softmax_loss(S, torch.tensor(Y))
    with pytest.raises(TypeError, match=r"scores is a torch array but weight is a numpy array"):
        xs.softmax_loss(torch.tensor(S), torch.tensor(Y), weight=np.ones(3))
    with pytest.raises(TypeError, match=r"x is a numpy array but w is a torch array"):
        xs.affine_forward(S, torch.ones(3, 2, dtype=torch.float64), np.zeros(2))


def test_lists_are_not_arrays():
    with pytest.raises(TypeError, match=r"scores must be an array .*got builtins.list"):
        xs.softmax_loss(S.tolist(), Y)
    with pytest.raises(TypeError, match=r"y must be an array .*got builtins.list"):
        xs.softmax_loss(S, Y.tolist())
    for f in (xs.logsumexp, xs.softmax, xs.log_softmax, xs.relu_forward):
        with pytest.raises(TypeError, match=r"x must be an array"):
            f([1.0, 2.0])


# ------------------------------------------------------------ primitives


def test_primitive_bad_axis_and_dtype(xp):
    x = on(xp, S)
    for f in (xs.logsumexp, xs.softmax, xs.log_softmax):
        with pytest.raises(ValueError, match=r"axis 2 is out of range for x with shape \(4, 3\)"):
            f(x, axis=2)
        with pytest.raises(TypeError, match="axis must be an int"):
            f(x, axis=1.0)
        with pytest.raises(TypeError, match="x must have a real floating dtype"):
            f(on(xp, Y))
        with pytest.raises(ValueError, match=r"x has no elements along axis -1"):
            f(on(xp, np.zeros((2, 0))))


# ------------------------------------------------------------ layers


def test_affine_shape_mismatch(xp):
    x, w, b = on(xp, np.zeros((2, 3, 2))), on(xp, np.zeros((5, 4))), on(xp, np.zeros(4))
    with pytest.raises(ValueError, match=r"w must have shape \(D, M\) with D = 6 .*got shape \(5, 4\)"):
        xs.affine_forward(x, w, b)
    with pytest.raises(ValueError, match=r"b must have shape \(M,\) = \(4,\), got shape \(3,\)"):
        xs.affine_forward(on(xp, np.zeros((2, 5))), w, on(xp, np.zeros(3)))
    with pytest.raises(ValueError, match=r"w must be 2-D"):
        xs.affine_forward(x, on(xp, np.zeros(6)), b)
    with pytest.raises(TypeError, match="x must have a real floating dtype"):
        xs.affine_forward(on(xp, np.zeros((2, 5), dtype=np.int64)), w, b)


def test_bad_cache(xp):
    x = on(xp, np.zeros((2, 3)))
    with pytest.raises(TypeError, match="cache must be the tuple returned by affine_forward"):
        xs.affine_backward(on(xp, np.zeros((2, 4))), None)
    with pytest.raises(TypeError, match="cache must be the tuple returned by affine_forward"):
        xs.affine_backward(on(xp, np.zeros((2, 4))), (x, x))
    with pytest.raises(TypeError, match="cache must be the tuple returned by affine_relu_forward"):
        xs.affine_relu_backward(on(xp, np.zeros((2, 4))), (x,))
    with pytest.raises(TypeError, match="cache must be an array"):
        xs.relu_backward(x, (x,))


def test_dout_shape_mismatch(xp):
    x, w, b = on(xp, np.ones((2, 3))), on(xp, np.ones((3, 4))), on(xp, np.ones(4))
    _, cache = xs.affine_forward(x, w, b)
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 4\), got \(4, 2\)"):
        xs.affine_backward(on(xp, np.ones((4, 2))), cache)
    _, cache = xs.relu_forward(x)
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 3\)"):
        xs.relu_backward(on(xp, np.ones((3,))), cache)
    _, cache = xs.affine_relu_forward(x, w, b)
    with pytest.raises(ValueError, match=r"dout must have"):
        xs.affine_relu_backward(on(xp, np.ones((2, 5))), cache)
    with pytest.raises(TypeError, match="dout must have a real floating dtype"):
        xs.relu_backward(on(xp, np.ones((2, 3), dtype=np.int64)), cache[1])


# ------------------------------------------------------------ out=


def test_out_wrong_shape_or_dtype(xp):
    s = on(xp, S)
    y = on(xp, Y)
    if backend_name(xp) in ("numpy", "torch", "cupy"):
        with pytest.raises(ValueError, match=r"out must have the shape of scores \(4, 3\), got \(3, 4\)"):
            xs.softmax_loss(s, y, out=on(xp, np.zeros((3, 4))))
        with pytest.raises(TypeError, match=r"out must have the dtype of scores"):
            xs.softmax_loss(s, y, out=on(xp, np.zeros((4, 3)), "float32"))
    else:
        with pytest.raises(TypeError, match="out= needs a mutable array"):
            xs.softmax_loss(s, y, out=on(xp, np.zeros((4, 3))))
    with pytest.raises(TypeError, match="out must be an array"):
        xs.softmax_loss(s, y, out=np.zeros((4, 3)).tolist())


def test_out_read_only_numpy():
    out = np.zeros((4, 3))
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        xs.softmax_loss(S, Y, out=out)


# ------------------------------------------------------------ no mutation


def _every_public_call(xp, arrays):
    s, y, w, x, wl, bl, dout = arrays
    yield xs.softmax_loss(s, y)
    for reduction in ("mean", "sum", "none"):
        yield xs.softmax_loss(s, y, reduction=reduction, weight=w, ignore_index=1, label_smoothing=0.1)
    yield xs.softmax_loss(s, y, engine="reference")
    yield xs.logsumexp(s), xs.softmax(s), xs.log_softmax(s, axis=0)
    out, cache = xs.affine_forward(x, wl, bl)
    yield out, xs.affine_backward(dout, cache)
    out, cache = xs.relu_forward(x)
    yield out, xs.relu_backward(x, cache)
    out, cache = xs.affine_relu_forward(x, wl, bl)
    yield out, xs.affine_relu_backward(dout, cache)
    yield xs.gradcheck.numerical_gradient(lambda v: xs.softmax_loss(v, y)[0], s)
    yield xs.gradcheck.rel_error(s, s)
    yield xs.to_numpy(s), xs.asarray(s, backend=backend_name(xp))


def _host_arrays():
    rng = np.random.default_rng(1)
    return (
        rng.standard_normal((5, 4)),
        np.array([0, 3, 1, 1, 2]),
        rng.uniform(0.5, 2, 4),
        rng.standard_normal((5, 2, 2)),
        rng.standard_normal((4, 3)),
        rng.standard_normal(3),
        rng.standard_normal((5, 3)),
    )


def test_inputs_are_never_modified(xp):
    host = _host_arrays()
    arrays = [on(xp, a) for a in host]
    for _ in _every_public_call(xp, arrays):
        for arr, original in zip(arrays, host, strict=True):
            np.testing.assert_array_equal(xs.to_numpy(arr), original)


def test_read_only_numpy_inputs():
    host = _host_arrays()
    arrays = [a.copy() for a in host]
    for a in arrays:
        a.flags.writeable = False
    for _ in _every_public_call(np, arrays):
        pass
    for arr, original in zip(arrays, host, strict=True):
        np.testing.assert_array_equal(arr, original)


def test_read_only_float16_and_noncontiguous_numpy():
    s = np.asfortranarray(np.random.default_rng(2).standard_normal((6, 5)).astype(np.float16))
    s.flags.writeable = False
    y = np.arange(12)[::2] % 5
    y.flags.writeable = False
    loss, d = xs.softmax_loss(s, y)
    assert d.dtype == np.float16 and loss.dtype == np.float16


def test_float16_weight_on_float16_scores(xp):
    if not has_float16(xp):
        pytest.skip("no float16")
    s = on(xp, S, "float16")
    loss_, d = xs.softmax_loss(s, on(xp, Y), weight=on(xp, np.ones(3), "float16"))
    assert d.dtype == s.dtype


def test_numpy_scalar_options_are_accepted(xp):
    """np.float32(0.1) and np.int64(-100) mean 0.1 and -100 (they are Real / Integral)."""
    y = np.array([0, -100, 1, 2])
    a = loss(xp, y=y, label_smoothing=np.float32(0.25), ignore_index=np.int64(-100))
    b = loss(xp, y=y, label_smoothing=float(np.float32(0.25)), ignore_index=-100)
    np.testing.assert_array_equal(xs.to_numpy(a[1]), xs.to_numpy(b[1]))
    np.testing.assert_array_equal(xs.to_numpy(a[0]), xs.to_numpy(b[0]))
