"""Shared fixtures: an ``xp`` fixture over every known backend.

Backends that cannot run here skip with the reason ``available_backends``
gives (not installed, no CUDA device); they never fail. JAX runs with
float64 enabled so it can be held to the float64 reference.
"""

from __future__ import annotations

import functools
import tempfile

import pytest

import xsoftmax as xs
from xsoftmax._backend import BACKENDS, get_namespace

try:  # float64 on JAX; must happen before any JAX array is created
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:
    pass


@functools.cache
def backend_status() -> dict[str, str]:
    return xs.available_backends()


def require_backend(name: str):
    """The namespace of backend ``name``, or skip the test with the reason."""
    status = backend_status()[name]
    if status != "ok":
        pytest.skip(f"{name}: {status}")
    return get_namespace(name)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Name of each backend; the test is skipped where it is unavailable."""
    require_backend(request.param)
    return request.param


@pytest.fixture
def xp(backend):
    """The Array API namespace of each available backend."""
    return get_namespace(backend)


@pytest.fixture(scope="session", autouse=True)
def dask_temporary_directory():
    """Dask's scratch space (a LocalCluster's ``dask-scratch-space``) in a directory removed at the end.

    Without it every cluster leaves ``dask-scratch-space`` in the system
    temporary directory. The environment variable reaches worker processes
    and command lines run in a subprocess.
    """
    with (
        tempfile.TemporaryDirectory(prefix="xsoftmax-tests-dask-") as path,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setenv("DASK_TEMPORARY_DIRECTORY", path)
        try:
            import dask
        except ImportError:
            yield path
            return
        with dask.config.set({"temporary-directory": path}):
            yield path
