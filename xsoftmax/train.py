r"""Training loop and first-order update rules, written once for every backend.

An update rule has the CS231n signature ``rule(w, dw, config) -> (next_w,
config)``: ``config`` holds the hyperparameters and the rule's state (moment
estimates, step count), one dict per parameter. The rules use only array
arithmetic and ``sqrt`` from the arrays' own namespace and never update in
place, so they run on immutable arrays (JAX) and lazy ones (Dask) alike.

:class:`Solver` runs minibatch training: each epoch visits every training
row once in an order drawn from a host generator (so a seed gives the same
batches on every backend), decays the learning rate, records loss and
accuracy history, and keeps the parameters with the best validation
accuracy.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import numpy as np

from ._backend import array_namespace, device
from ._typing import Array
from ._validate import check_positive_int

__all__ = ["UPDATE_RULES", "Solver", "adam", "sgd", "sgd_momentum"]

Config = dict[str, Any]
UpdateRule = Callable[[Array, Array, Config], tuple[Array, Config]]


def sgd(w: Array, dw: Array, config: Config) -> tuple[Array, Config]:
    r"""Plain gradient descent: ``w ← w − lr·dw``.

    config: ``learning_rate`` (default 1e-2).
    """
    config.setdefault("learning_rate", 1e-2)
    return w - config["learning_rate"] * dw, config


def sgd_momentum(w: Array, dw: Array, config: Config) -> tuple[Array, Config]:
    r"""Gradient descent with momentum: ``v ← μ·v − lr·dw``, ``w ← w + v``.

    ``v`` is a running, exponentially decaying sum of past steps, which
    damps oscillation across a ravine and speeds travel along it.
    config: ``learning_rate`` (1e-2), ``momentum`` ``μ`` (0.9), ``velocity``
    (state, starts at 0).
    """
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    v = config.get("velocity")
    v = -config["learning_rate"] * dw if v is None else config["momentum"] * v - config["learning_rate"] * dw
    config["velocity"] = v
    return w + v, config


def adam(w: Array, dw: Array, config: Config) -> tuple[Array, Config]:
    r"""Adam (Kingma & Ba, 2015) with bias correction.

    With step ``t``: ``m ← β₁m + (1−β₁)dw``, ``v ← β₂v + (1−β₂)dw²``,
    ``m̂ = m/(1−β₁ᵗ)``, ``v̂ = v/(1−β₂ᵗ)``, ``w ← w − lr·m̂/(√v̂ + ε)``.
    config: ``learning_rate`` (1e-3), ``beta1`` (0.9), ``beta2`` (0.999),
    ``epsilon`` (1e-8); state ``m``, ``v`` (start at 0) and ``t``.
    """
    xp = array_namespace(w, dw, names=("w", "dw"))
    config.setdefault("learning_rate", 1e-3)
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    b1, b2 = config["beta1"], config["beta2"]
    t = config.get("t", 0) + 1
    m = (1 - b1) * dw if "m" not in config else b1 * config["m"] + (1 - b1) * dw
    v = (1 - b2) * (dw * dw) if "v" not in config else b2 * config["v"] + (1 - b2) * (dw * dw)
    config.update(t=t, m=m, v=v)
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    return w - config["learning_rate"] * m_hat / (xp.sqrt(v_hat) + config["epsilon"]), config


#: name -> update rule, for the command line and ``Solver(update_rule="adam")``.
UPDATE_RULES: dict[str, UpdateRule] = {"adam": adam, "sgd": sgd, "sgd_momentum": sgd_momentum}


def _field(data: Any, key: str) -> Array:
    """``data[key]`` for a mapping, ``data.key`` for a :class:`~xsoftmax.datasets.Dataset`."""
    try:
        return data[key] if isinstance(data, Mapping) else getattr(data, key)
    except (KeyError, AttributeError):
        raise ValueError(f"data must provide X_train, y_train, X_val and y_val; {key} is missing") from None


class Solver:
    r"""Minibatch training of a model with ``.params``, ``.loss(X, y)`` and ``.predict(X)``.

    Inputs:

    - ``model``: e.g. :class:`xsoftmax.nets.TwoLayerNet`.
    - ``data``: a :class:`xsoftmax.datasets.Dataset` or a mapping with
      ``X_train``, ``y_train``, ``X_val``, ``y_val`` on the model's backend.
    - ``update_rule``: a name in :data:`UPDATE_RULES` or a rule function.
    - ``optim_config``: hyperparameters for the rule (``learning_rate``, ...),
      copied for every parameter.
    - ``lr_decay``: after each epoch ``learning_rate ← lr_decay ·
      learning_rate``.
    - ``batch_size``: rows per step; each epoch is ``⌈N / batch_size⌉``
      steps over a fresh permutation of the rows.
    - ``num_epochs``; ``seed`` for the batch order.
    - ``num_train_samples``: training accuracy is measured each epoch on at
      most this many rows (a fixed subset drawn once), ``None`` for all.
    - ``verbose``, ``print_every`` (epochs between progress lines; default
      about ten lines per run), ``stream`` (default ``sys.stdout``).

    After :meth:`train`: ``loss_history`` (one value per step),
    ``train_acc_history`` and ``val_acc_history`` (one per epoch),
    ``best_val_acc``, ``best_epoch`` (the last epoch reaching it),
    ``best_params``; ``model.params`` is set to ``best_params``.
    """

    def __init__(
        self,
        model: Any,
        data: Any,
        *,
        update_rule: str | UpdateRule = "sgd",
        optim_config: Mapping[str, Any] | None = None,
        lr_decay: float = 1.0,
        batch_size: int = 100,
        num_epochs: int = 10,
        seed: int | None = 0,
        num_train_samples: int | None = 1000,
        verbose: bool = True,
        print_every: int | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.model = model
        self.X_train, self.y_train = _field(data, "X_train"), _field(data, "y_train")
        self.X_val, self.y_val = _field(data, "X_val"), _field(data, "y_val")
        if isinstance(update_rule, str):
            if update_rule not in UPDATE_RULES:
                raise ValueError(
                    f"update_rule must be one of {', '.join(sorted(UPDATE_RULES))} or a "
                    f"function; got {update_rule!r}"
                )
            update_rule = UPDATE_RULES[update_rule]
        self.update_rule: UpdateRule = update_rule
        self.optim_config = dict(optim_config or {})
        if not lr_decay > 0:
            raise ValueError(f"lr_decay must be > 0, got {lr_decay!r}")
        self.lr_decay = lr_decay
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.num_epochs = check_positive_int(num_epochs, "num_epochs")
        self.num_train_samples = num_train_samples
        self.verbose = verbose
        self.print_every = print_every or max(1, num_epochs // 10)
        self.stream = stream
        self._rng = np.random.default_rng(seed)
        self._reset()

    def _reset(self) -> None:
        self.epoch = 0
        self.best_val_acc = -1.0
        self.best_epoch = 0
        self.best_params: dict[str, Array] = {}
        self.loss_history: list[float] = []
        self.train_acc_history: list[float] = []
        self.val_acc_history: list[float] = []
        self.optim_configs = {name: dict(self.optim_config) for name in self.model.params}

    def _rows(self, X: Array, indices: np.ndarray) -> Array:
        """Rows ``indices`` (host) of ``X``, gathered on ``X``'s backend."""
        xp = array_namespace(X)
        return xp.take(X, xp.asarray(indices, device=device(X)), axis=0)

    def _step(self, X: Array, y: Array) -> None:
        loss, grads = self.model.loss(X, y)
        self.loss_history.append(float(loss))
        for name, w in self.model.params.items():
            next_w, self.optim_configs[name] = self.update_rule(w, grads[name], self.optim_configs[name])
            self.model.params[name] = next_w

    def check_accuracy(self, X: Array, y: Array) -> float:
        """Fraction of rows of ``X`` whose predicted class equals ``y``."""
        xp = array_namespace(X)
        hits = xp.sum(xp.astype(self.model.predict(X) == y, y.dtype))
        return int(hits) / int(X.shape[0])

    def _log(self, message: str) -> None:
        if self.verbose:
            print(message, file=self.stream or sys.stdout, flush=True)

    def train(self) -> Solver:
        """Run ``num_epochs`` epochs; returns ``self`` so results can be chained."""
        self._reset()
        n = int(self.X_train.shape[0])
        steps_per_epoch = max(1, math.ceil(n / self.batch_size))
        full_batch = self.batch_size >= n
        X_acc, y_acc = self.X_train, self.y_train
        if self.num_train_samples is not None and n > self.num_train_samples:
            rows = np.sort(self._rng.choice(n, self.num_train_samples, replace=False))
            X_acc, y_acc = self._rows(X_acc, rows), self._rows(y_acc, rows)
        start = time.perf_counter()
        for epoch in range(1, self.num_epochs + 1):
            order = self._rng.permutation(n)
            for i in range(steps_per_epoch):
                # A full batch needs no gather: the row order does not change the gradient.
                if full_batch:
                    self._step(self.X_train, self.y_train)
                else:
                    rows = order[i * self.batch_size : (i + 1) * self.batch_size]
                    self._step(self._rows(self.X_train, rows), self._rows(self.y_train, rows))
            for config in self.optim_configs.values():
                if "learning_rate" in config:
                    config["learning_rate"] *= self.lr_decay
            self.epoch = epoch
            self._end_of_epoch(X_acc, y_acc, time.perf_counter() - start)
        self.model.params = dict(self.best_params)
        return self

    def _end_of_epoch(self, X_acc: Array, y_acc: Array, elapsed: float) -> None:
        train_acc = self.check_accuracy(X_acc, y_acc)
        val_acc = self.check_accuracy(self.X_val, self.y_val)
        self.train_acc_history.append(train_acc)
        self.val_acc_history.append(val_acc)
        # Ties go to the later epoch: as good on validation, and trained longer
        # (small validation sets tie often). Updates build new arrays and never
        # write in place, so keeping references is a snapshot.
        if val_acc >= self.best_val_acc:
            self.best_val_acc, self.best_epoch = val_acc, self.epoch
            self.best_params = dict(self.model.params)
        if self.epoch % self.print_every == 0 or self.epoch in (1, self.num_epochs):
            self._log(
                f"epoch {self.epoch:>{len(str(self.num_epochs))}}/{self.num_epochs}  "
                f"loss {self.loss_history[-1]:.4f}  train acc {train_acc:.3f}  "
                f"val acc {val_acc:.3f}  ({elapsed:.1f} s)"
            )
