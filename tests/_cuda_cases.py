"""Inputs and the oracle comparison for the CuPy engines' new options, shared by both twins.

Probability targets, z-loss and softcap (issue 15) reach the engines through
``LossInputs`` fields; until the public layer validates them, the tests build
the record by hand (:func:`loss_inputs`) and compare with ``tests/_oracle.py``.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
from _oracle import oracle_softmax_loss

from xsoftmax._reduction import LossInputs

from _helpers import ENGINE_TOLERANCES

#: Option sets over weight / ignore_index / label smoothing (ignore_index: labels only).
OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore_index": 2},
    "smooth": {"label_smoothing": 0.2},
    "all": {"weight": True, "ignore_index": 2, "label_smoothing": 0.1},
}
#: The new terms, alone and together.
EXTRAS = {
    "none": {},
    "z": {"z_loss": 0.05},
    "cap": {"softcap": 4.0},
    "z+cap": {"z_loss": 0.05, "softcap": 4.0},
}


def cases(targets=("labels", "probs")):
    """(target, option, extra) triples: every option with every new term (labels: plain is old)."""
    for target in targets:
        for option in OPTIONS:
            for extra in EXTRAS:
                if target == "probs" and "ignore_index" in OPTIONS[option]:
                    continue
                if target == "labels" and extra == "none":
                    continue  # the existing tests cover it
                yield target, option, extra


def loss_inputs(scores, y, *, reduction="mean", weight=None, ignore_index=None, label_smoothing=0.0,
                z_loss=0.0, softcap=None) -> LossInputs:
    """The validated record an engine receives, built by hand (what ``check_loss_inputs`` will give)."""
    xp = array_api_compat.array_namespace(scores)
    backend = type(scores).__module__.split(".")[0]  # "numpy" or "cupy"
    return LossInputs(xp, scores, y, weight, ignore_index, float(label_smoothing), reduction, False,
                      None, backend, float(z_loss), softcap)


def make_case(dtype, target, option, extra, *, n=37, c=13, seed=0, q_dtype=None):
    """Scores with ±1e4 rows, labels or (unnormalised, partly zero) probabilities, and keywords."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, c)) * 3
    s[1] += 1e4  # large but finite logits: the shift must make them harmless
    s[2] -= 1e4
    s[3, ::2] += 1e4
    s = s.astype(dtype)
    kw = {k: v for k, v in {**OPTIONS[option], **EXTRAS[extra]}.items() if k != "weight"}
    if target == "probs":
        kw.pop("ignore_index", None)  # refused with probabilities, as in torch
    if OPTIONS[option].get("weight"):
        kw["weight"] = (rng.random(c) + 0.25).astype(dtype)
    if target == "labels":
        y = rng.integers(0, c, n).astype(np.int64)
    else:
        q = rng.random((n, c)) * (rng.random((n, c)) > 0.3)  # q need not sum to 1; some zeros
        y = (q / np.maximum(q.sum(axis=1, keepdims=True), 1e-3)).astype(q_dtype or dtype)
        y[5] *= 1.7  # a row that sums to 1.7
    return s, y, kw


def assert_like_oracle(got, scores, y, dtype=None, floor=1e-30, **kw):
    """``got = (loss, dscores)`` equals the float64 oracle of the same inputs to the dtype's rounding
    (absolute tolerance relative to the largest finite value, or to ``floor`` where all are ~0)."""
    loss, d = got
    weight = kw.pop("weight", None)
    w64 = None if weight is None else np.asarray(weight, np.float64)
    y64 = y if np.issubdtype(y.dtype, np.integer) else np.asarray(y, np.float64)
    ref_loss, ref_d = oracle_softmax_loss(np.asarray(scores, np.float64), y64, weight=w64, **kw)
    dtype = dtype or scores.dtype.name
    rtol, atol = ENGINE_TOLERANCES[dtype]
    assert d.shape == scores.shape and loss.shape == ref_loss.shape
    assert d.dtype == scores.dtype and loss.dtype == scores.dtype
    for name, a, b in (("loss", loss, ref_loss), ("dscores", d, ref_d)):
        b64 = np.asarray(b, dtype=np.float64)
        finite = b64[np.isfinite(b64)]
        scale = float(np.max(np.abs(finite))) if finite.size else 1.0
        np.testing.assert_allclose(
            np.asarray(a, dtype=np.float64), b64, rtol=rtol, atol=atol * max(scale, floor),
            err_msg=f"{name} differs from the oracle",
        )


def kdim_case(dtype, target, shape, *, seed=0):
    """K-dimensional scores ``(N, C, d1, …)`` with labels ``(N, d1, …)`` or probabilities, all options."""
    rng = np.random.default_rng(seed)
    n, c = shape[:2]
    s = (rng.standard_normal(shape) * 3).astype(dtype)
    s[0, :, 0] += 1e3  # one large position
    kw = {"weight": (rng.random(c) + 0.25).astype(dtype), "label_smoothing": 0.1, "z_loss": 0.01,
          "softcap": 6.0}
    if target == "labels":
        y = rng.integers(0, c, (n, *shape[2:])).astype(np.int64)
        y.reshape(-1)[::5] = -100
        kw["ignore_index"] = -100
    else:
        y = rng.random(shape).astype(dtype)
    return s, y, kw


def public_through(monkeypatch, engine):
    """``xs.softmax_loss(..., engine="fused")`` on NumPy arrays runs ``engine`` (a twin-driven
    CuPy driver) behind the public checks and the K-dim batching."""
    import xsoftmax._dispatch as dispatch

    monkeypatch.setattr(dispatch, "select_engine", lambda backend, name: engine)
