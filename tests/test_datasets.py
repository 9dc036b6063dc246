"""Built-in data sets: the shipped iris file, its reproducible split, the spiral generator."""

from __future__ import annotations

import hashlib
import importlib.resources

import array_api_compat as compat
import numpy as np
import pytest

import xsoftmax as xs
from xsoftmax import datasets
from xsoftmax._backend import backend_name


def _host(ds):
    return tuple(xs.to_numpy(a) for a in (ds.X_train, ds.y_train, ds.X_val, ds.y_val))


def _raw_iris():
    text = importlib.resources.files("xsoftmax").joinpath("data/iris.csv").read_bytes()
    rows = text.decode("ascii").strip().splitlines()[1:]
    table = np.array([[float(v) for v in r.split(",")] for r in rows])
    return text, table[:, :4], table[:, 4].astype(int)


def test_iris_file_is_fishers_150_rows():
    text, X, y = _raw_iris()
    # The exact bytes of scikit-learn 1.9.1's sklearn/datasets/data/iris.csv.
    digest = "f13ffa8fdd56fd8e6c8d16d4081a3fbd3114bcd0aae4256c43205169cd9d1449"
    assert hashlib.sha256(text).hexdigest() == digest
    assert X.shape == (150, 4)
    assert np.bincount(y).tolist() == [50, 50, 50]
    # Fisher's summary statistics (means of the four measurements, cm).
    np.testing.assert_allclose(X.mean(axis=0), [5.843, 3.057, 3.758, 1.199], atol=5e-4)
    assert X[0].tolist() == [5.1, 3.5, 1.4, 0.2] and y[0] == 0


def test_iris_split_is_stratified_and_covers_every_row_once():
    _, X, y = _raw_iris()
    ds = datasets.iris(standardize=False, seed=3)
    Xt, yt, Xv, yv = _host(ds)
    assert Xt.shape == (120, 4) and Xv.shape == (30, 4)
    assert np.bincount(yt).tolist() == [40, 40, 40]
    assert np.bincount(yv).tolist() == [10, 10, 10]
    # Together the two splits are the 150 rows (with their labels), each once.
    both = np.column_stack([np.vstack([Xt, Xv]), np.concatenate([yt, yv])])
    whole = np.column_stack([X, y])
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_allclose(key(both), key(whole), rtol=1e-6)
    assert ds.class_names == ("setosa", "versicolor", "virginica")
    assert ds.num_features == 4 and ds.num_classes == 3


def test_iris_split_is_reproducible_and_seeded():
    a, b = _host(datasets.iris(seed=5)), _host(datasets.iris(seed=5))
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    c = _host(datasets.iris(seed=6))
    assert not np.array_equal(a[1], c[1])


def test_iris_standardised_with_training_statistics_only():
    raw = _host(datasets.iris(standardize=False, seed=1, dtype="float64"))
    std = _host(datasets.iris(standardize=True, seed=1, dtype="float64"))
    mu, sigma = raw[0].mean(axis=0), raw[0].std(axis=0)
    np.testing.assert_allclose(std[0].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(std[0].std(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(std[2], (raw[2] - mu) / sigma, rtol=1e-12)
    np.testing.assert_array_equal(std[3], raw[3])


def test_spiral_shape_labels_and_geometry():
    Xt, yt, Xv, yv = _host(datasets.spiral(dtype="float64"))
    assert Xt.shape == (300, 2) and Xv.shape == (300, 2)
    assert np.bincount(yt).tolist() == [100, 100, 100]
    # Radii run evenly from 0 to 1 along each arm; noise only moves the angle.
    r = np.hypot(Xt[:, 0], Xt[:, 1])
    np.testing.assert_allclose(r[:100], np.linspace(0, 1, 100), atol=1e-12)
    # The validation split is a fresh draw, not a copy.
    assert not np.allclose(Xt, Xv)
    ds = datasets.spiral(50, 4, seed=1)
    assert ds.X_train.shape == (200, 2) and ds.num_classes == 4


def test_spiral_reproducible_and_seeded():
    a, b = _host(datasets.spiral(seed=2)), _host(datasets.spiral(seed=2))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], _host(datasets.spiral(seed=3))[0])


@pytest.mark.parametrize("name", ["spiral", "iris"])
def test_same_data_on_every_backend(xp, name):
    ds = datasets.load(name, seed=4, backend=backend_name(xp), dtype="float64")
    for arr in (ds.X_train, ds.y_train, ds.X_val, ds.y_val):
        assert backend_name(compat.array_namespace(arr)) == backend_name(xp)
    assert ds.X_train.dtype == xp.float64
    assert xp.isdtype(ds.y_train.dtype, "integral")
    ref = _host(datasets.load(name, seed=4, backend="numpy", dtype="float64"))
    for u, v in zip(_host(ds), ref, strict=True):
        np.testing.assert_array_equal(u, v)


def test_bad_arguments():
    with pytest.raises(ValueError, match="data set must be one of"):
        datasets.load("mnist")
    with pytest.raises(ValueError, match="val_fraction"):
        datasets.iris(val_fraction=1.0)
    with pytest.raises(ValueError, match="num_per_class"):
        datasets.spiral(1)
    with pytest.raises(ValueError, match="noise"):
        datasets.spiral(noise=-1.0)
