"""Probability targets with label smoothing at a −inf logit whose q is 0: +inf as in torch, on every engine.

``q' = (1 − ε) q + ε/C`` is mixed before its product with the logits, so the
masked class enters the loss as ``q'_k · ∞ = +inf`` (torch), not as
``0 · (−inf) = NaN`` from an unmixed ``Σ w q (s − m)``
(:func:`xsoftmax._reduction.probability_rows`).
"""

from __future__ import annotations

import numpy as np
import pytest
from _oracle import oracle_softmax_loss

import xsoftmax as xs

S = np.array([[0.0, -np.inf, 1.0], [0.5, 0.2, -0.1]])
Q = np.array([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]])
OPTIONS = [
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.1, "weight": np.array([1.0, 2.0, 0.5])},
    {"label_smoothing": 0.3, "z_loss": 0.1, "softcap": 2.0},
    {},  # no smoothing: 0 · inf = NaN in the loss, as in torch
]


def _dask(kw, chunks):
    da = pytest.importorskip("dask.array")
    s, q = da.from_array(S, chunks=chunks), da.from_array(Q, chunks=chunks)
    options = {k: da.from_array(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    return s, q, options


@pytest.mark.parametrize("kw", OPTIONS, ids=lambda kw: "+".join(kw) or "plain")
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("where", ["reference", "fused", "dask-rows", "dask-classes"])
def test_masked_class_with_zero_probability(where, reduction, kw):
    ref_loss, ref_d = oracle_softmax_loss(S, Q, reduction=reduction, **kw)
    if where.startswith("dask"):
        s, q, options = _dask(kw, (1, 3) if where == "dask-rows" else (2, 1))
        loss, d = (a.compute() for a in xs.softmax_loss(s, q, reduction=reduction, **options))
    else:
        with np.errstate(invalid="ignore"):
            loss, d = xs.softmax_loss(S, Q, reduction=reduction, engine=where, **kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(d, ref_d, rtol=1e-12, atol=1e-15)
    if kw.get("label_smoothing") and kw.get("softcap") is None:  # (softcap turns −inf into −c)
        assert np.isposinf(np.asarray(loss).reshape(-1)[0])
