"""The routing decision of softmax_loss(engine="auto") for every backend and device kind, without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

import xsoftmax as xs
from xsoftmax import _routing
from xsoftmax._routing import (
    CUPY_DLPACK,
    NATIVE,
    NUMPY_VIEWS,
    REFERENCE,
    TORCH_AUTOGRAD,
    Facts,
    choose_path,
    inspect_scores,
)

TABLE = [
    (Facts("numpy", "cpu"), NATIVE),
    (Facts("cupy", "cuda"), NATIVE),
    (Facts("dask", "cpu"), NATIVE),
    (Facts("array_api_strict", "cpu"), NATIVE),
    (Facts("torch", "cpu"), NUMPY_VIEWS),
    (Facts("torch", "cpu", requires_grad=True), TORCH_AUTOGRAD),
    (Facts("torch", "cuda", requires_grad=True, cupy_available=True), TORCH_AUTOGRAD),
    (Facts("torch", "cuda", cupy_available=True), CUPY_DLPACK),
    (Facts("torch", "cuda", cupy_available=False), REFERENCE),
    (Facts("torch", "mps"), REFERENCE),
    (Facts("torch", "meta"), REFERENCE),
    (Facts("jax", "cpu"), NUMPY_VIEWS),
    (Facts("jax", "unknown", traced=True), REFERENCE),
    (Facts("jax", "gpu"), REFERENCE),
    (Facts("jax", "tpu"), REFERENCE),
]


@pytest.mark.parametrize(("facts", "path"), TABLE, ids=[f"{f.backend}-{f.device_type}-{p}" for f, p in TABLE])
def test_choose_path_table(facts, path):
    assert choose_path(facts) == path


def test_numpy_and_other_arrays_are_not_routed():
    s, y = np.zeros((2, 3)), np.array([0, 1])
    assert inspect_scores(s).backend == "other"
    assert _routing.route(s, y) is None


# --------------------------------------------------------------------------- torch


torch_only = pytest.mark.skipif(
    xs.available_backends()["torch"] != "ok", reason="torch is not installed"
)


def _fake_cuda_class():
    import torch

    class FakeCudaTensor(torch.Tensor):
        """A CPU tensor that reports a CUDA device: what routing and device checks read."""

        @property
        def device(self):  # type: ignore[override]
            return torch.device("cuda", 0)

    return FakeCudaTensor


@torch_only
def test_torch_facts_read_from_real_tensors():
    import torch

    x = torch.zeros(2, 3)
    assert inspect_scores(x) == Facts("torch", "cpu")
    x.requires_grad_()
    assert inspect_scores(x).requires_grad
    with torch.no_grad():
        assert not inspect_scores(x).requires_grad
    assert choose_path(inspect_scores(torch.zeros(2, 3, device="meta"))) == REFERENCE


@torch_only
def test_fake_cuda_tensor_takes_the_cupy_dlpack_path(monkeypatch):
    import torch

    fake = torch.randn(6, 4).as_subclass(_fake_cuda_class())
    y = torch.tensor([0, 1, 2, 3, 0, 1]).as_subclass(_fake_cuda_class())
    facts = inspect_scores(fake)
    assert facts.device_type == "cuda"
    monkeypatch.setattr(_routing, "cupy_available", lambda: True)
    assert choose_path(inspect_scores(fake)) == CUPY_DLPACK
    # CuPy needs a GPU: the DLPack hand-off is replaced by NumPy views, the
    # rest of the path (softmax_loss on the views, torch.from_dlpack back) runs.
    handed = []

    def to_cupy(t):
        handed.append(t)
        return _routing.numpy_view(torch.Tensor(t))

    monkeypatch.setattr(_routing, "_torch_to_cupy", to_cupy)
    loss, d = xs.softmax_loss(fake, y)
    assert len(handed) == 2 and isinstance(d, torch.Tensor)
    ref_loss, ref_d = xs.softmax_loss(torch.Tensor(fake).numpy(), torch.Tensor(y).numpy())
    np.testing.assert_allclose(d.numpy(), ref_d)
    np.testing.assert_allclose(loss.numpy(), ref_loss)
    monkeypatch.setattr(_routing, "cupy_available", lambda: False)
    assert choose_path(inspect_scores(fake)) == REFERENCE


@torch_only
def test_fake_cuda_tensor_mixed_with_cpu_raises_naming_both():
    import torch

    from xsoftmax.torch import cross_entropy

    fake = torch.randn(4, 3).as_subclass(_fake_cuda_class())
    y = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="target is on cpu"):
        cross_entropy(fake, y)
    with pytest.raises(ValueError, match="two devices"):
        xs.softmax_loss(fake, y)


@torch_only
def test_torch_mixed_with_numpy_is_a_type_error():
    import torch

    with pytest.raises(TypeError, match="two array namespaces"):
        xs.softmax_loss(torch.zeros(2, 3), np.array([0, 1]))


@torch_only
def test_engine_reference_is_not_routed(monkeypatch):
    import torch

    def fail(*args, **kwargs):
        raise AssertionError("routed")

    monkeypatch.setattr("xsoftmax._softmax.route", fail)
    loss, d = xs.softmax_loss(torch.zeros(2, 3), torch.tensor([0, 1]), engine="reference")
    assert isinstance(d, torch.Tensor)


@torch_only
def test_cpu_tensors_share_memory_with_their_views():
    import torch

    x = torch.randn(3, 4)
    view = _routing.numpy_view(x)
    assert view.ctypes.data == x.data_ptr()
    back = _routing.from_numpy_like(view, x)
    assert back.data_ptr() == x.data_ptr()
    assert _routing.numpy_view(x.to(torch.bfloat16)).dtype == np.float32


# --------------------------------------------------------------------------- jax


jax_only = pytest.mark.skipif(xs.available_backends()["jax"] != "ok", reason="jax is not installed")


@jax_only
def test_jax_concrete_arrays_take_numpy_views_and_traced_ones_the_reference(monkeypatch):
    import jax
    import jax.numpy as jnp

    s = jnp.asarray(np.random.default_rng(0).standard_normal((5, 3)))
    y = jnp.asarray([0, 1, 2, 0, 1])
    assert inspect_scores(s) == Facts("jax", "cpu")
    seen = []

    def spy(path, *args, **kwargs):
        seen.append(path)
        return real(path, *args, **kwargs)

    real = _routing.run_path
    monkeypatch.setattr("xsoftmax._softmax.run_path", spy)
    loss, d = xs.softmax_loss(s, y)
    assert seen == [NUMPY_VIEWS] and isinstance(d, jax.Array)
    traced = jax.jit(lambda s, y: xs.softmax_loss(s, y)[1])(s, y)
    assert seen[-1] == REFERENCE
    np.testing.assert_allclose(np.asarray(traced), np.asarray(d), rtol=1e-12, atol=1e-14)
    facts = []
    jax.jit(lambda s: facts.append(inspect_scores(s)) or s)(s)
    assert facts[0].traced and choose_path(facts[0]) == REFERENCE


@jax_only
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_jax_routed_dtypes_match_the_reference(dtype):
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.standard_normal((9, 5)) * 3, dtype=dtype)
    y = jnp.asarray(rng.integers(0, 5, 9))
    loss, d = xs.softmax_loss(s, y, label_smoothing=0.1)
    ref_loss, ref_d = xs.softmax_loss(s, y, label_smoothing=0.1, engine="reference")
    assert loss.dtype == d.dtype == s.dtype and type(d) is type(ref_d)
    tol = {"float16": 2e-3, "bfloat16": 2e-2}.get(dtype, 1e-6)
    np.testing.assert_allclose(np.asarray(d, np.float64), np.asarray(ref_d, np.float64), atol=tol)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=tol)


@torch_only
def test_softmax_loss_out_with_requires_grad_is_rejected():
    import torch

    with pytest.raises(ValueError, match="out= cannot be combined"):
        xs.softmax_loss(torch.zeros(2, 3, requires_grad=True), torch.tensor([0, 1]), out=torch.zeros(2, 3))


@jax_only
def test_jax_out_is_still_rejected():
    import jax.numpy as jnp

    s = jnp.zeros((2, 3))
    with pytest.raises(TypeError, match="out= needs a mutable array"):
        xs.softmax_loss(s, jnp.asarray([0, 1]), out=jnp.zeros((2, 3)))
