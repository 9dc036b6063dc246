"""Probability targets, z-loss and softcap on a real GPU: both CuPy engines against the oracle.

Needs a CUDA device (skips with the reason elsewhere). Without one the same
kernel text is proven by ``test_cupy_nvrtc.py``, ``test_cupy_cpu_twin.py`` and
``test_cupy_block_twin.py``, which run these cases on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from _cuda_cases import assert_like_oracle, cases, loss_inputs, make_case

import xsoftmax as xs

pytestmark = pytest.mark.gpu

CASES = [(d, *case) for case in cases() for d in ("float16", "float32", "float64")]


@pytest.fixture(scope="module")
def cp():
    status = xs.available_backends()["cupy"]
    if status != "ok":
        pytest.skip(f"cupy: {status}")
    import cupy

    return cupy


@pytest.mark.parametrize("engine", ["fused", "fused-row"])
@pytest.mark.parametrize("dtype,target,option,extra", CASES, ids=["-".join(c) for c in CASES])
def test_cupy_engines_match_the_oracle_on_gpu(cp, engine, dtype, target, option, extra):
    from xsoftmax._engines.cupy import softmax_loss, softmax_loss_row

    s, y, kw = make_case(dtype, target, option, extra, n=257, c=129)
    if dtype == "float16" and "softcap" not in kw:
        s[1:4] /= 1e3  # ζ lse² at lse = 1e4 is past float16's range
    gs, gy = cp.asarray(s), cp.asarray(y)
    gkw = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    run = softmax_loss if engine == "fused" else softmax_loss_row
    for reduction in ("mean", "none"):
        loss, d = run(loss_inputs(gs, gy, reduction=reduction, **gkw))
        assert_like_oracle((cp.asnumpy(loss), cp.asnumpy(d)), s, y, reduction=reduction, **kw)
    # out=scores: the gradient overwrites the scores, same numbers.
    work = gs.copy()
    loss2, d2 = run(loss_inputs(work, gy, reduction="none", **gkw), out=work)
    assert d2 is work
    cp.testing.assert_array_equal(d2, d)
