r"""Small built-in data sets for the networks: interleaved spirals and Fisher's iris.

Both are produced on the host with a seeded NumPy generator and only then
moved onto the requested backend, so a seed gives bit-identical data on
every backend. Each loader returns a :class:`Dataset` with a training and a
validation split.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Callable
from typing import Any

import numpy as np

from ._backend import asarray
from ._typing import Array

__all__ = ["DATASETS", "Dataset", "iris", "load", "spiral"]

_IRIS_FEATURES = (
    "sepal length (cm)",
    "sepal width (cm)",
    "petal length (cm)",
    "petal width (cm)",
)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification data set split into training and validation rows.

    ``X_*`` are ``(N, D)`` floating arrays and ``y_*`` ``(N,)`` int64 labels
    in ``[0, C)``, all on one backend. The arrays can also be read as in
    CS231n's ``data`` dict: ``data["X_train"]``, ``data.keys()``,
    ``data.items()``.
    """

    #: The array fields, in CS231n's order: the keys of the dict view.
    KEYS = ("X_train", "y_train", "X_val", "y_val")

    name: str
    X_train: Array
    y_train: Array
    X_val: Array
    y_val: Array
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]

    @property
    def num_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __getitem__(self, key: str) -> Array:
        if key not in self.KEYS:
            raise KeyError(f"{key!r}: a Dataset's arrays are {', '.join(self.KEYS)}")
        return getattr(self, key)

    def keys(self) -> tuple[str, ...]:
        return self.KEYS

    def items(self) -> list[tuple[str, Array]]:
        return [(key, getattr(self, key)) for key in self.KEYS]


def _on_backend(
    name: str,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    class_names: tuple[str, ...],
    feature_names: tuple[str, ...],
    backend: str | None,
    dtype: Any,
) -> Dataset:
    X_train, y_train, X_val, y_val = splits
    return Dataset(
        name=name,
        X_train=asarray(X_train, backend=backend, dtype=dtype),
        y_train=asarray(y_train.astype(np.int64), backend=backend),
        X_val=asarray(X_val, backend=backend, dtype=dtype),
        y_val=asarray(y_val.astype(np.int64), backend=backend),
        class_names=class_names,
        feature_names=feature_names,
    )


def _spiral_points(
    rng: np.random.Generator, num_per_class: int, num_classes: int, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    r"""Class ``k``'s points ``r·(sin θ, cos θ)`` with ``r`` from 0 to 1.

    ``θ`` runs linearly over ``[4k, 4k + 4]`` radians plus ``noise·N(0, 1)``,
    so each arm winds about 0.6 turns and the arms interleave: no linear
    classifier separates them, a one-hidden-layer ReLU net does.
    """
    r = np.linspace(0.0, 1.0, num_per_class)
    X = np.empty((num_per_class * num_classes, 2))
    y = np.repeat(np.arange(num_classes), num_per_class)
    for k in range(num_classes):
        theta = np.linspace(4.0 * k, 4.0 * (k + 1), num_per_class)
        theta = theta + noise * rng.standard_normal(num_per_class)
        rows = slice(k * num_per_class, (k + 1) * num_per_class)
        X[rows, 0] = r * np.sin(theta)
        X[rows, 1] = r * np.cos(theta)
    return X, y


def spiral(
    num_per_class: int = 100,
    num_classes: int = 3,
    *,
    noise: float = 0.2,
    seed: int = 0,
    backend: str | None = None,
    dtype: Any = "float32",
) -> Dataset:
    """``num_classes`` interleaved noisy spirals in the plane (CS231n's toy data).

    The training split has ``num_per_class`` points per class; the
    validation split is a second, independent draw of the same size from the
    same generator, so validation accuracy measures generalisation to new
    noise rather than memorisation.
    """
    if num_per_class < 2 or num_classes < 2:
        raise ValueError(
            f"spiral needs num_per_class >= 2 and num_classes >= 2, "
            f"got {num_per_class} and {num_classes}"
        )
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    train = _spiral_points(rng, num_per_class, num_classes, noise)
    val = _spiral_points(rng, num_per_class, num_classes, noise)
    return _on_backend(
        "spiral",
        (*train, *val),
        tuple(f"arm {k}" for k in range(num_classes)),
        ("x", "y"),
        backend,
        dtype,
    )


def _read_iris() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The 150 rows of ``xsoftmax/data/iris.csv`` (see ``data/README.md``).

    The first line is ``n_samples,n_features,class names...``; each row after
    it is four measurements and the class index.
    """
    text = importlib.resources.files("xsoftmax").joinpath("data/iris.csv").read_text("ascii")
    header, *rows = text.strip().splitlines()
    n_samples, n_features, *class_names = header.split(",")
    table = np.array([[float(v) for v in row.split(",")] for row in rows])
    if table.shape != (int(n_samples), int(n_features) + 1):
        raise RuntimeError(f"iris.csv is damaged: expected {n_samples} rows, got {table.shape[0]}")
    return table[:, :-1], table[:, -1].astype(np.int64), tuple(class_names)


def _stratified_split(
    y: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, val)``: ``round(val_fraction · n_k)`` of each class ``k`` to val."""
    train, val = [], []
    for k in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == k))
        n_val = int(round(val_fraction * rows.size))
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(val))


def iris(
    *,
    val_fraction: float = 0.2,
    standardize: bool = True,
    seed: int = 0,
    backend: str | None = None,
    dtype: Any = "float32",
) -> Dataset:
    r"""Fisher's iris flowers: 4 measurements, 3 species, 50 flowers each.

    Split per species (stratified), reproducibly from ``seed``: with the
    default ``val_fraction=0.2``, 40 flowers of each species train and 10
    validate (120/30).

    With ``standardize`` (the default) every feature becomes
    ``(x − μ)/σ`` with the mean and standard deviation of the *training*
    rows only (the validation rows use the same ``μ, σ``, so nothing leaks).
    The raw features span 0.1–7.9 cm; on a common scale a small net with
    weights starting near 0 trains in a few hundred steps instead of
    thousands.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    X, y, class_names = _read_iris()
    train, val = _stratified_split(y, val_fraction, np.random.default_rng(seed))
    X_train, X_val = X[train], X[val]
    if standardize:
        mu, sigma = X_train.mean(axis=0), X_train.std(axis=0)
        X_train, X_val = (X_train - mu) / sigma, (X_val - mu) / sigma
    return _on_backend(
        "iris", (X_train, y[train], X_val, y[val]), class_names, _IRIS_FEATURES, backend, dtype
    )


#: name -> loader; each loader takes ``seed``, ``backend`` and ``dtype`` keywords.
DATASETS: dict[str, Callable[..., Dataset]] = {"iris": iris, "spiral": spiral}


def load(name: str, **kwargs: Any) -> Dataset:
    """The built-in data set ``name`` ("spiral" or "iris"); ``kwargs`` go to its loader."""
    if name not in DATASETS:
        raise ValueError(f"data set must be one of {', '.join(sorted(DATASETS))}; got {name!r}")
    return DATASETS[name](**kwargs)
