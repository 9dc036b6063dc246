"""Test helpers: moving data onto backends and comparing with a float64 reference."""

from __future__ import annotations

import contextlib
import math

import array_api_compat as compat
import numpy as np

import xsoftmax as xs
from xsoftmax._backend import backend_name

#: (rtol, atol) against a float64 NumPy reference, by dtype name.
TOLERANCES = {
    "float64": (1e-10, 1e-12),
    "float32": (2e-5, 2e-6),
    "float16": (1e-2, 2e-3),
    "bfloat16": (4e-2, 2e-2),
}


#: Engine against engine (fused vs reference: the same math, other rounding):
#: (rtol, atol as a fraction of the largest |reference| value), by dtype, a
#: few units of rounding of the dtype the kernels compute and store in.
ENGINE_TOLERANCES = {"float64": (1e-12, 1e-13), "float32": (8e-6, 2e-6), "float16": (2e-3, 1e-3)}


def dtype_name(dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1].replace("'>", "").replace("dtype(", "").strip("')\"")


def on(xp, array, dtype=None):
    """``array`` (host data) as an array of namespace ``xp``."""
    return xs.asarray(np.asarray(array), backend=backend_name(xp), dtype=dtype)


def assert_close(actual, expected, xp, *, dtype=None, rtol=None, atol=None, like=None):
    """Check namespace, dtype, device (of ``like``), then values against float64 ``expected``."""
    assert compat.is_array_api_obj(actual), f"expected an array, got {type(actual)}"
    assert backend_name(compat.array_namespace(actual)) == backend_name(xp)
    if dtype is not None:
        assert actual.dtype == dtype, f"dtype {actual.dtype} != {dtype}"
    if like is not None and not compat.is_lazy_array(like):
        assert compat.device(actual) == compat.device(like)
    name = dtype_name(actual.dtype)
    r, a = TOLERANCES.get(name, TOLERANCES["float32"])
    np.testing.assert_allclose(
        xs.to_numpy(actual).astype(np.float64),
        np.asarray(expected, dtype=np.float64),
        rtol=r if rtol is None else rtol,
        atol=a if atol is None else atol,
    )


# ---------------------------------------------------------------------------
# Independent float64 NumPy references, written plainly (loops, CS231n style)
# so that they share no code and no vectorised trick with xsoftmax.
# ---------------------------------------------------------------------------

def ref_logsumexp(x, axis=-1, keepdims=False):
    """``log Σ exp`` in float64 with the max shift; an all −inf slice gives −inf."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def ref_softmax(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def ref_log_softmax(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    return x - ref_logsumexp(x, axis=axis, keepdims=True)


def _row_neg_log_probs(row):
    """``−log p_k = lse(row) − row_k`` for one row, by a plain loop."""
    m = max(row)
    if not math.isfinite(m):
        m = 0.0
    total = sum(math.exp(v - m) for v in row)
    lse = m + math.log(total) if total > 0 else -math.inf  # every class masked: NaN below
    return [lse - v for v in row], [math.exp(v - lse) for v in row]


def ref_softmax_loss(scores, y, *, reduction="mean", weight=None, ignore_index=None,
                     label_smoothing=0.0):
    """Loop-based float64 softmax cross-entropy and its gradient.

    Per row, with ``p = softmax(s_i)``, target ``q = (1 − ε) e_y + ε/C`` and
    class weights ``w`` (torch's definition of weighted label smoothing):

    ``loss_i = (1 − ε) w_y (−log p_y) + (ε/C) Σ_k w_k (−log p_k)``
    ``∂loss_i/∂s_ik = (1 − ε) w_y (p_k − 1[k = y]) + (ε/C) (W p_k − w_k)``

    "mean" divides the sum by ``Σ_i w_{y_i}`` over rows not ignored.
    """
    s = np.asarray(scores, dtype=np.float64)
    labels = [int(v) for v in np.asarray(y)]
    n, c = s.shape
    w = [1.0] * c if weight is None else [float(v) for v in np.asarray(weight)]
    eps = float(label_smoothing)
    rows = np.zeros(n)
    grad = np.zeros((n, c))
    denom = 0.0
    for i in range(n):
        yi = labels[i]
        if ignore_index is not None and yi == ignore_index:
            continue
        nlp, p = _row_neg_log_probs(list(s[i]))
        wy = w[yi]
        denom += wy
        loss_i = (1.0 - eps) * wy * nlp[yi]
        if eps:
            loss_i += eps / c * sum(w[k] * nlp[k] for k in range(c))
        rows[i] = loss_i
        big_w = sum(w)
        for k in range(c):
            g = (1.0 - eps) * wy * (p[k] - (1.0 if k == yi else 0.0))
            if eps:
                g += eps / c * (big_w * p[k] - w[k])
            grad[i, k] = g
    if reduction == "none":
        return rows, grad
    total = float(np.sum(rows))
    if reduction == "sum":
        return np.float64(total), grad
    if denom == 0.0:
        # torch: the loss is NaN (its NLL term is 0/0 on its own, even when
        # the smoothing term is not 0); kept rows' gradient is NaN, ignored
        # rows' stays 0
        kept = np.array([ignore_index is None or v != ignore_index for v in labels])
        return np.float64(np.nan), np.where(kept[:, None], np.nan, grad)
    return np.float64(total / denom), grad / denom


def ref_affine_forward(x, w, b):
    x = np.asarray(x, dtype=np.float64)
    x2 = x.reshape(x.shape[0], -1)
    n, d = x2.shape
    m = np.asarray(w).shape[1]
    out = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            out[i, j] = sum(x2[i, k] * float(w[k, j]) for k in range(d)) + float(b[j])
    return out


def ref_affine_backward(dout, x, w):
    """CS231n: dx = dout wᵀ (reshaped), dw = x̃ᵀ dout, db = Σ_rows dout."""
    x = np.asarray(x, dtype=np.float64)
    x2 = x.reshape(x.shape[0], -1)
    dout = np.asarray(dout, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    return (dout @ w.T).reshape(x.shape), x2.T @ dout, dout.sum(axis=0)


def ref_relu_forward(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x, 0.0)


def ref_relu_backward(dout, x):
    return np.asarray(dout, dtype=np.float64) * (np.asarray(x) > 0)


# ---------------------------------------------------------------------------
# PyTorch autograd as a second, outside reference
# ---------------------------------------------------------------------------


def torch_cross_entropy(scores, y, *, reduction="mean", weight=None, ignore_index=None,
                        label_smoothing=0.0):
    """``(loss, dscores)`` from ``torch.nn.functional.cross_entropy`` in float64.

    For "none" the gradient is that of ``loss.sum()``: each row's own gradient.
    """
    import torch
    import torch.nn.functional as F

    s = torch.tensor(np.asarray(scores, dtype=np.float64), requires_grad=True)
    kwargs = {"reduction": reduction, "label_smoothing": float(label_smoothing)}
    if weight is not None:
        kwargs["weight"] = torch.tensor(np.asarray(weight, dtype=np.float64))
    if ignore_index is not None:
        kwargs["ignore_index"] = ignore_index
    loss = F.cross_entropy(s, torch.tensor(np.asarray(y, dtype=np.int64)), **kwargs)
    loss.sum().backward()
    return loss.detach().numpy(), s.grad.numpy()


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------
# Data and laziness
# ---------------------------------------------------------------------------


def make_problem(rng, n, c, *, scale=3.0, ignore_index=None, n_ignored=0):
    """Random float64 logits (N, C) and int64 labels; ``n_ignored`` rows set to ignore_index."""
    scores = rng.standard_normal((n, c)) * scale
    y = rng.integers(0, c, size=n).astype(np.int64)
    if ignore_index is not None and n_ignored:
        y[rng.choice(n, size=n_ignored, replace=False)] = ignore_index
    return scores, y


@contextlib.contextmanager
def no_compute():
    """Dask scheduler that fails the test if anything is computed inside the block.

    The idea of array-api-extra's ``lazy_xp_function``: building a graph is
    fine, running it is not.
    """
    import dask

    def forbidden(dsk, keys, **kwargs):
        raise AssertionError("a Dask graph was computed before .compute() was called")

    with dask.config.set(scheduler=forbidden):
        yield


def graph_size(*arrays) -> int:
    """Number of distinct tasks in the union of the arrays' Dask graphs."""
    keys = {}
    for a in arrays:
        keys.update(dict(a.__dask_graph__()))
    return len(keys)


def is_backend(xp, name: str) -> bool:
    return backend_name(xp) == name


def has_float16(xp) -> bool:
    """array-api-strict only has the standard's dtypes (no float16)."""
    return backend_name(xp) != "array_api_strict"


def dtype_of(xp, name: str):
    """The dtype called ``name`` on backend ``xp`` (Dask's namespace lacks float16)."""
    from xsoftmax._backend import _resolve_dtype

    return _resolve_dtype(xp, name)
