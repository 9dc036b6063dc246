"""Test helpers: moving data onto backends and comparing with a float64 reference."""

from __future__ import annotations

import numpy as np
import array_api_compat as compat

import xsoftmax as xs
from xsoftmax._backend import backend_name

#: (rtol, atol) against a float64 NumPy reference, by dtype name.
TOLERANCES = {
    "float64": (1e-10, 1e-12),
    "float32": (2e-5, 2e-6),
    "float16": (1e-2, 2e-3),
    "bfloat16": (4e-2, 2e-2),
}


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
