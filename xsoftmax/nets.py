r"""Fully connected ReLU networks with a softmax cross-entropy loss, on any backend.

A network with hidden widths ``H_1 … H_{L−1}`` computes

.. math::

    h_0 = X,\qquad h_l = \max(0,\; h_{l−1} W_l + b_l)\ (l < L),\qquad
    s = h_{L−1} W_L + b_L,

and is trained on

.. math::

    \text{loss} = \frac1N Σ_i \big(\operatorname{lse}(s_i) − s_{i,y_i}\big)
                  + \tfrac12\,\text{reg}\,Σ_l \lVert W_l\rVert_F^2 .

The data term and ``∂/∂s = (softmax(s) − onehot(y))/N`` come from
:func:`xsoftmax.softmax_loss`; the layers and their backward rules from
:mod:`xsoftmax._layers`. The L2 term adds ``reg · W_l`` to each weight's
gradient and nothing to the biases.

Parameters are drawn from a host NumPy generator and then moved onto the
backend, so one seed gives the same starting network on every backend.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._backend import array_namespace, asarray, get_backend
from ._layers import affine_backward, affine_forward, affine_relu_backward, affine_relu_forward
from ._softmax import softmax_loss
from ._typing import Array
from ._validate import check_positive_int

__all__ = ["FullyConnectedNet", "TwoLayerNet"]


def _non_negative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _l2_penalty(weights: Sequence[Array], reg: float) -> tuple[Any, list[Array]]:
    r"""``(½·reg·Σ_l ΣW_l², [reg·W_l])``: the L2 term and its gradient per weight."""
    penalty = sum(0.5 * reg * array_namespace(w).sum(w * w) for w in weights)
    return penalty, [reg * w for w in weights]


class FullyConnectedNet:
    r"""``{affine − relu} × (L−1) − affine − softmax``, with L2 regularisation.

    Inputs:

    The arguments, their order and their defaults are CS231n's (assignment
    2), for CIFAR-10 rows of ``3·32·32`` features and 10 classes:

    - ``hidden_dims``: widths ``(H_1, …, H_{L−1})`` of the hidden layers
      (at least one).
    - ``input_dim``: ``D``, the number of features of each input row.
    - ``num_classes``: ``C``.
    - ``dropout_keep_ratio``, ``normalization``: accepted for CS231n's
      signature; only their "off" values (1 and None) are supported.
    - ``reg``: L2 strength (``½·reg·ΣW²`` in the loss).
    - ``weight_scale``: weights start as ``weight_scale · N(0, 1)``, biases
      as 0.
    - ``dtype``: a dtype name ("float32", "float64") or a dtype of the
      backend (``np.float64`` on NumPy).
    - ``seed``: seed of the host generator that draws the weights (CS231n
      seeds dropout with it; here it seeds the weights).
    - ``backend`` (keyword only): where ``params`` live (default: the
      current backend).

    ``params`` maps ``"W1"``, ``"b1"``, …, ``"WL"``, ``"bL"`` to arrays of
    shape ``(D, H_1)``, ``(H_1,)``, …, ``(H_{L−1}, C)``, ``(C,)``.
    """

    def __init__(
        self,
        hidden_dims: Sequence[int],
        input_dim: int = 3 * 32 * 32,
        num_classes: int = 10,
        dropout_keep_ratio: float = 1,
        normalization: str | None = None,
        reg: float = 0.0,
        weight_scale: float = 1e-2,
        dtype: Any = "float32",
        seed: int | None = None,
        *,
        backend: str | None = None,
    ) -> None:
        # CS231n's signature, in its order; dropout and batch/layer norm are not layers here.
        if dropout_keep_ratio != 1:
            raise ValueError(
                f"dropout_keep_ratio must be 1 (xsoftmax has no dropout layer), got {dropout_keep_ratio!r}"
            )
        if normalization is not None:
            raise ValueError(
                f"normalization must be None (xsoftmax has no batch or layer norm), got {normalization!r}"
            )
        if isinstance(hidden_dims, (int, np.integer)) or not isinstance(hidden_dims, Sequence):
            raise ValueError(f"hidden_dims must be a sequence of widths, got {hidden_dims!r}")
        if len(hidden_dims) == 0:
            raise ValueError("hidden_dims must name at least one hidden layer, got an empty sequence")
        dims = [check_positive_int(input_dim, "input_dim")]
        dims += [check_positive_int(h, f"hidden_dims[{i}]") for i, h in enumerate(hidden_dims)]
        dims.append(check_positive_int(num_classes, "num_classes"))
        self.reg = _non_negative(reg, "reg")
        weight_scale = _non_negative(weight_scale, "weight_scale")
        self.backend = get_backend() if backend is None else backend
        self.num_layers = len(dims) - 1

        rng = np.random.default_rng(seed)
        self.params: dict[str, Array] = {}
        for layer, (d_in, d_out) in enumerate(itertools.pairwise(dims), start=1):
            w = weight_scale * rng.standard_normal((d_in, d_out))
            self.params[f"W{layer}"] = asarray(w, backend=self.backend, dtype=dtype)
            self.params[f"b{layer}"] = asarray(np.zeros(d_out), backend=self.backend, dtype=dtype)
        self.dtype = self.params["W1"].dtype

    def _layer(self, layer: int) -> tuple[Array, Array]:
        return self.params[f"W{layer}"], self.params[f"b{layer}"]

    def loss(self, X: Array, y: Array | None = None, reg: Any = None) -> Any:
        """Class scores ``(N, C)`` if ``y`` is None, else ``(loss, grads)``.

        ``loss`` is a 0-d array of the parameters' namespace; ``grads`` has
        the keys and shapes of ``params``. ``reg`` is not an argument here
        (CS231n's assignment 1 passed it to ``loss``): set it in the
        constructor, where it is ``½·reg·ΣW²``.
        """
        if reg is not None:
            name = type(self).__name__
            hint = ""
            if isinstance(reg, (int, float)) and not isinstance(reg, bool):
                hint = (f"; the penalty is 0.5*reg*sum(W**2), so CS231n assignment 1's "
                        f"reg*sum(W**2) with reg={reg!r} is reg={2 * reg!r} here")
            raise TypeError(
                f"{name}.loss() takes no reg (got reg={reg!r}): set the L2 strength in the "
                f"constructor, {name}(..., reg=...), or as net.reg = ...{hint}"
            )
        h = X
        caches: list[Any] = []  # affine_relu caches, then the last affine layer's
        for layer in range(1, self.num_layers):
            h, cache = affine_relu_forward(h, *self._layer(layer))
            caches.append(cache)
        scores, last_cache = affine_forward(h, *self._layer(self.num_layers))
        caches.append(last_cache)
        if y is None:
            return scores

        data_loss, dout = softmax_loss(scores, y)
        weights = [self.params[f"W{layer}"] for layer in range(1, self.num_layers + 1)]
        penalty, dweights = _l2_penalty(weights, self.reg)

        grads: dict[str, Array] = {}
        for layer in range(self.num_layers, 0, -1):
            backward = affine_backward if layer == self.num_layers else affine_relu_backward
            dout, dw, db = backward(dout, caches[layer - 1])
            grads[f"W{layer}"] = dw + dweights[layer - 1]
            grads[f"b{layer}"] = db
        return data_loss + penalty, grads

    def predict(self, X: Array) -> Array:
        """``argmax_k scores[i, k]``: the predicted class of each row, shape ``(N,)``."""
        scores = self.loss(X)
        return array_namespace(scores).argmax(scores, axis=1)


class TwoLayerNet(FullyConnectedNet):
    r"""CS231n's spiral network: ``affine − relu − affine − softmax``.

    ``scores = max(0, X W1 + b1) W2 + b2`` with ``W1`` ``(D, H)``, ``W2``
    ``(H, C)``. Backprop, as in CS231n: ``dscores = (p − onehot(y))/N``,
    ``dW2 = hᵀ dscores + reg·W2``, ``db2 = Σ_i dscores_i``,
    ``dh = dscores W2ᵀ ⊙ 1[h > 0]``, ``dW1 = Xᵀ dh + reg·W1``,
    ``db1 = Σ_i dh_i``.

    The arguments, their order and their defaults are CS231n's (assignment
    2's ``TwoLayerNet``): CIFAR-10 rows, 100 hidden units, 10 classes.
    """

    def __init__(
        self,
        input_dim: int = 3 * 32 * 32,
        hidden_dim: int = 100,
        num_classes: int = 10,
        weight_scale: float = 1e-3,
        reg: float = 0.0,
        *,
        backend: str | None = None,
        dtype: Any = "float32",
        seed: int | None = None,
    ) -> None:
        super().__init__(
            [hidden_dim],
            input_dim=input_dim,
            num_classes=num_classes,
            weight_scale=weight_scale,
            reg=reg,
            backend=backend,
            dtype=dtype,
            seed=seed,
        )
