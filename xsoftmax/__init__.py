"""xsoftmax: softmax cross-entropy and affine/ReLU kernels for every Array API backend.

>>> import numpy as np, xsoftmax as xs
>>> loss, dscores = xs.softmax_loss(np.log(np.array([[0.2, 0.3, 0.5]])), np.array([1]))
>>> np.round(dscores, 6).tolist()
[[0.2, -0.7, 0.5]]
"""

from importlib import metadata as _metadata

from . import datasets, gradcheck, nets, train
from ._backend import (
    asarray,
    available_backends,
    get_backend,
    set_backend,
    to_numpy,
    use_backend,
)
from ._layers import (
    affine_backward,
    affine_forward,
    affine_relu_backward,
    affine_relu_forward,
    relu_backward,
    relu_forward,
)
from ._linear import linear_softmax_loss
from ._primitives import log_softmax, logsumexp, softmax
from ._softmax import softmax_loss

try:
    __version__ = _metadata.version("xsoftmax")  # one copy of the version: pyproject.toml's
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
del _metadata

__all__ = [
    "__version__",
    "affine_backward",
    "affine_forward",
    "affine_relu_backward",
    "affine_relu_forward",
    "asarray",
    "available_backends",
    "datasets",
    "get_backend",
    "gradcheck",
    "linear_softmax_loss",
    "log_softmax",
    "logsumexp",
    "nets",
    "relu_backward",
    "relu_forward",
    "set_backend",
    "softmax",
    "softmax_loss",
    "to_numpy",
    "train",
    "use_backend",
]
