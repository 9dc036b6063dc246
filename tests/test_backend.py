"""Backend registry, context-local default backend, asarray / to_numpy, lazy imports."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

import xsoftmax as xs
from xsoftmax._backend import BACKENDS, backend_name, get_namespace

from _helpers import dtype_of, has_float16, on


def test_available_backends_reports_every_backend():
    status = xs.available_backends()
    assert list(status) == ["numpy", "cupy", "torch", "jax", "dask", "array_api_strict"]
    assert status["numpy"] == "ok"
    for reason in status.values():
        assert isinstance(reason, str) and reason
        if reason != "ok":
            assert reason.startswith(("not installed", "no CUDA", "import failed")), reason


def test_available_backends_matches_imports():
    """A backend is "ok" exactly when its namespace can be obtained."""
    for name, reason in xs.available_backends().items():
        if reason == "ok":
            assert backend_name(get_namespace(name)) == name
        elif reason.startswith("not installed"):
            with pytest.raises(ValueError, match=f"backend '{name}' is not available"):
                get_namespace(name)


def test_cupy_without_device_reports_cupys_reason():
    pytest.importorskip("cupy")
    reason = xs.available_backends()["cupy"]
    if reason == "ok":
        pytest.skip("a CUDA device is present")
    assert reason.startswith("no CUDA")
    assert "driver" in reason or "device" in reason


def test_default_backend_is_numpy():
    assert xs.get_backend() == "numpy"
    assert isinstance(xs.asarray([1.0, 2.0]), np.ndarray)


def test_set_backend_and_use_backend(backend):
    before = xs.get_backend()
    with xs.use_backend(backend) as xp:
        assert xs.get_backend() == backend
        assert backend_name(xp) == backend
        arr = xs.asarray([[1.0, 2.0]])
        assert backend_name(xs._backend.array_namespace(arr)) == backend
    assert xs.get_backend() == before


def test_set_backend_is_context_local():
    """set_backend in one thread does not leak into another (contextvars)."""
    results = {}
    barrier = threading.Barrier(2)

    def worker(name):
        xs.set_backend(name)
        barrier.wait()  # both threads have set their backend before either reads
        results[name] = xs.get_backend()

    names = ["numpy", "array_api_strict" if xs.available_backends()["array_api_strict"] == "ok" else "numpy"]
    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {n: n for n in names}
    assert xs.get_backend() == "numpy"  # the main thread never changed


def test_use_backend_in_threads_does_not_interfere():
    ok = [n for n, r in xs.available_backends().items() if r == "ok"]
    seen = {}
    barrier = threading.Barrier(len(ok))

    def worker(name):
        with xs.use_backend(name):
            barrier.wait()
            seen[name] = backend_name(xs._backend.array_namespace(xs.asarray([1.0])))

    threads = [threading.Thread(target=worker, args=(n,)) for n in ok]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {n: n for n in ok}


def test_use_backend_restores_after_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with xs.use_backend("numpy"):
            xs.set_backend("numpy")
            raise RuntimeError("boom")
    assert xs.get_backend() == "numpy"
    other = next((n for n, r in xs.available_backends().items() if r == "ok" and n != "numpy"), None)
    if other is None:
        pytest.skip("only numpy available")
    with pytest.raises(KeyError):
        with xs.use_backend(other):
            assert xs.get_backend() == other
            raise KeyError("x")
    assert xs.get_backend() == "numpy"


def test_set_backend_in_the_test_context_is_undone():
    """set_backend changes the current context only; run it in a copied context."""
    import contextvars

    other = next((n for n, r in xs.available_backends().items() if r == "ok" and n != "numpy"), None)
    if other is None:
        pytest.skip("only numpy available")
    ctx = contextvars.copy_context()
    assert ctx.run(lambda: (xs.set_backend(other), xs.get_backend())[1]) == other
    assert xs.get_backend() == "numpy"


@pytest.mark.parametrize("name", ["nope", "NumPy", None, 3])
def test_unknown_backend(name):
    names = "numpy, cupy, torch, jax, dask, array_api_strict"
    with pytest.raises(ValueError, match=rf"backend must be one of {names}"):
        xs.set_backend(name)
    with pytest.raises(ValueError, match="backend must be one of"):
        with xs.use_backend(name):
            pass
    if name is not None:  # asarray(backend=None) means the current backend
        with pytest.raises(ValueError, match="backend must be one of"):
            xs.asarray([1.0], backend=name)


def test_unavailable_backend_is_a_clear_error(monkeypatch):
    """A backend that cannot be imported is reported, and asking for it is a ValueError."""
    import xsoftmax._backend as backend_module

    real = backend_module._import_backend

    def without_jax(name):
        if name == "jax":
            raise ImportError("No module named 'jax'")
        return real(name)

    monkeypatch.setattr(backend_module, "_import_backend", without_jax)
    assert xs.available_backends()["jax"] == "not installed (No module named 'jax')"
    with pytest.raises(ValueError, match=r"backend 'jax' is not available: No module named 'jax'"):
        xs.set_backend("jax")
    with pytest.raises(ValueError, match="backend 'jax' is not available"):
        xs.asarray([1.0], backend="jax")
    assert xs.get_backend() == "numpy"


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "float16"])
def test_asarray_dtype_string_or_object(xp, backend, dtype):
    if dtype == "float16" and not has_float16(xp):
        pytest.skip("array_api_strict has no float16")
    data = [[1.0, 2.0], [3.0, 4.0]]
    a = xs.asarray(data, backend=backend, dtype=dtype)
    assert a.dtype == dtype_of(xp, dtype)
    b = xs.asarray(np.asarray(data), backend=backend, dtype=dtype_of(xp, dtype))
    assert b.dtype == a.dtype
    np.testing.assert_array_equal(xs.to_numpy(a), np.asarray(data, dtype=dtype))
    assert backend_name(xs._backend.array_namespace(a)) == backend


def test_asarray_bad_dtype_name(backend):
    with pytest.raises(ValueError, match=f"dtype 'float7' is not a dtype of backend '{backend}'"):
        xs.asarray([1.0], backend=backend, dtype="float7")


def test_asarray_default_dtype_follows_data(backend):
    a = xs.asarray(np.array([1, 2, 3]), backend=backend)
    assert xs.to_numpy(a).dtype.kind == "i"
    f = xs.asarray(np.array([1.5]), backend=backend)
    assert xs.to_numpy(f).dtype == np.float64


def test_to_numpy_round_trip(xp):
    host = np.random.default_rng(0).standard_normal((3, 4))
    arr = on(xp, host)
    back = xs.to_numpy(arr)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)
    np.testing.assert_array_equal(xs.to_numpy(on(xp, np.arange(5))), np.arange(5))
    assert xs.to_numpy(on(xp, np.array(2.5))).shape == ()


@pytest.mark.parametrize("target", BACKENDS)
def test_asarray_moves_between_backends(xp, target):
    """An array of one backend becomes an equal array of another (through the host)."""
    from conftest import require_backend

    require_backend(target)
    host = np.arange(6.0).reshape(2, 3)
    moved = xs.asarray(on(xp, host), backend=target)
    assert backend_name(xs._backend.array_namespace(moved)) == target
    np.testing.assert_array_equal(xs.to_numpy(moved), host)


def test_asarray_same_backend_is_not_copied_needlessly(backend):
    arr = xs.asarray([1.0, 2.0], backend=backend)
    assert xs.asarray(arr, backend=backend) is arr


def test_to_numpy_bfloat16_widens():
    torch = pytest.importorskip("torch")
    out = xs.to_numpy(torch.tensor([1.5, -2.0], dtype=torch.bfloat16))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [1.5, -2.0])


def test_to_numpy_of_host_data():
    np.testing.assert_array_equal(xs.to_numpy([1, 2]), [1, 2])
    x = np.ones(3)
    assert xs.to_numpy(x) is x


def _optional_backends_imported_by(code: str) -> str:
    """The optional backends a fresh interpreter has imported after running ``code``."""
    code += (
        "\nimport sys\n"
        "heavy = ['torch', 'jax', 'dask', 'cupy', 'array_api_strict', 'distributed']\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_does_not_import_optional_backends():
    imported = _optional_backends_imported_by("import xsoftmax, xsoftmax.gradcheck")
    assert imported == "", f"import xsoftmax imported {imported}"


def test_numpy_call_does_not_import_optional_backends():
    """Computing on NumPy arrays (loss, layers, gradcheck) imports no other backend either."""
    imported = _optional_backends_imported_by(
        "import numpy as np, xsoftmax as xs\n"
        "s = np.zeros((3, 4)); y = np.array([0, 1, 2])\n"
        "xs.softmax_loss(s, y); xs.softmax_loss(s, y, engine='reference'); xs.logsumexp(s)\n"
        "o, c = xs.affine_relu_forward(s, np.ones((4, 2)), np.zeros(2)); xs.affine_relu_backward(o, c)\n"
        "xs.gradcheck.numerical_gradient(lambda v: xs.softmax_loss(v, y)[0], s)"
    )
    assert imported == "", f"a NumPy computation imported {imported}"


def test_mixed_namespaces_in_every_entry_point():
    torch = pytest.importorskip("torch")
    t = torch.zeros((2, 3), dtype=torch.float64)
    with pytest.raises(TypeError, match="numpy.*torch"):
        xs.softmax_loss(np.zeros((2, 3)), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="torch.*numpy"):
        xs.affine_backward(t, (t, np.zeros((3, 3)), np.zeros(3)))
    _, cache = xs.relu_forward(np.zeros((2, 3)))
    with pytest.raises(TypeError, match=r"cache is a numpy array but dout is a torch array"):
        xs.relu_backward(t, cache)


def test_asarray_copies_host_data():
    """Writing to the new array never writes through to the caller's NumPy array."""
    torch = pytest.importorskip("torch")
    host = np.zeros(3)
    t = xs.asarray(host, backend="torch")
    t[0] = 5.0
    np.testing.assert_array_equal(host, 0.0)
    assert isinstance(t, torch.Tensor)
