r"""Training loop and first-order update rules, written once for every backend.

An update rule has the CS231n signature ``rule(w, dw, config) -> (next_w,
config)``: ``config`` holds the hyperparameters and the rule's state (moment
estimates, step count), one dict per parameter. The rules use only array
arithmetic and ``sqrt`` from the arrays' own namespace and never update in
place, so they run on immutable arrays (JAX) and lazy ones (Dask) alike.

:class:`Solver` runs minibatch training with CS231n's options: each epoch
visits every training row once in an order drawn from a host generator (so
a seed gives the same batches on every backend), decays the learning rate,
records loss and accuracy history (the accuracies start with those of the
untrained model), keeps the parameters with the best validation accuracy,
and can pickle a checkpoint after every epoch.
"""

from __future__ import annotations

import math
import pickle
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import numpy as np

from ._backend import array_namespace, device
from ._typing import Array
from ._validate import check_positive_int

__all__ = ["UPDATE_RULES", "Solver", "adam", "rmsprop", "sgd", "sgd_momentum"]

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


def rmsprop(w: Array, dw: Array, config: Config) -> tuple[Array, Config]:
    r"""RMSProp (Tieleman & Hinton, 2012): a per-weight step scaled by a running RMS of gradients.

    ``cache ← ρ·cache + (1−ρ)·dw²``, ``w ← w − lr·dw/(√cache + ε)``.
    config (CS231n's names and defaults): ``learning_rate`` (1e-2),
    ``decay_rate`` ``ρ`` (0.99), ``epsilon`` (1e-8); state ``cache`` (starts
    at 0).
    """
    xp = array_namespace(w, dw, names=("w", "dw"))
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("decay_rate", 0.99)
    config.setdefault("epsilon", 1e-8)
    rho = config["decay_rate"]
    cache = config.get("cache")
    cache = (1 - rho) * (dw * dw) if cache is None else rho * cache + (1 - rho) * (dw * dw)
    config["cache"] = cache
    return w - config["learning_rate"] * dw / (xp.sqrt(cache) + config["epsilon"]), config


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
UPDATE_RULES: dict[str, UpdateRule] = {
    "adam": adam,
    "rmsprop": rmsprop,
    "sgd": sgd,
    "sgd_momentum": sgd_momentum,
}


def _field(data: Any, key: str) -> Array:
    """``data[key]`` for a mapping, ``data.key`` for a :class:`~xsoftmax.datasets.Dataset`."""
    try:
        return data[key] if isinstance(data, Mapping) else getattr(data, key)
    except (KeyError, AttributeError):
        raise ValueError(f"data must provide X_train, y_train, X_val and y_val; {key} is missing") from None


class Solver:
    r"""Minibatch training of a model with ``.params``, ``.loss(X, y)`` and ``.predict(X)``.

    The arguments and attributes are CS231n's (assignment 2's ``Solver``).

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
    - ``num_epochs``; ``seed`` for the batch order and the accuracy subsets.
    - ``num_train_samples``, ``num_val_samples``: the accuracies are measured
      on at most this many rows (a fresh random subset each time), ``None``
      for all.
    - ``checkpoint_name``: after every epoch, pickle the model and the
      history to ``f"{checkpoint_name}_epoch_{epoch}.pkl"``.
    - ``verbose``; ``print_every``: a loss line every this many iterations
      (steps), and an accuracy line after each epoch; ``print_epoch_every``
      thins the accuracy lines (the first and last epoch always print);
      ``stream`` (default ``sys.stdout``).

    After :meth:`train`: ``loss_history`` (one value per step),
    ``train_acc_history`` and ``val_acc_history`` (``num_epochs + 1`` values:
    before training, then after each epoch), ``best_val_acc``, ``best_epoch``
    (the last epoch reaching it; 0 is the untrained model), ``best_params``;
    ``model.params`` is set to ``best_params``.
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
        num_val_samples: int | None = None,
        checkpoint_name: str | None = None,
        verbose: bool = True,
        print_every: int = 10,
        print_epoch_every: int = 1,
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
        self.num_train_samples = _optional_count(num_train_samples, "num_train_samples")
        self.num_val_samples = _optional_count(num_val_samples, "num_val_samples")
        if checkpoint_name is not None and not isinstance(checkpoint_name, str):
            raise TypeError(f"checkpoint_name must be a str or None, got {checkpoint_name!r}")
        self.checkpoint_name = checkpoint_name
        self.verbose = verbose
        self.print_every = check_positive_int(print_every, "print_every")
        self.print_epoch_every = check_positive_int(print_epoch_every, "print_epoch_every")
        self.stream = stream
        # Two streams: subsets for accuracy never shift the batch order of a seed.
        self._rng = np.random.default_rng(seed)
        self._sample_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
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

    def check_accuracy(
        self, X: Array, y: Array, num_samples: int | None = None, batch_size: int = 100
    ) -> float:
        """Fraction of rows of ``X`` whose predicted class equals ``y``.

        ``num_samples``: measure on that many rows drawn at random (without
        replacement), ``None`` for all. Predictions are made ``batch_size``
        rows at a time, so a large ``X`` never needs all its scores at once.
        """
        num_samples = _optional_count(num_samples, "num_samples")
        batch_size = check_positive_int(batch_size, "batch_size")
        n = int(X.shape[0])
        if num_samples is not None and n > num_samples:
            rows = np.sort(self._sample_rng.choice(n, num_samples, replace=False))
            X, y = self._rows(X, rows), self._rows(y, rows)
            n = num_samples
        xp = array_namespace(X)
        hits = 0
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            whole = start == 0 and stop == n  # no slicing: keeps a lazy (Dask) X in one graph
            Xb, yb = (X, y) if whole else (X[start:stop, ...], y[start:stop])
            hits += int(xp.sum(xp.astype(self.model.predict(Xb) == yb, yb.dtype)))
        return hits / n if n else 0.0

    def _log(self, message: str) -> None:
        if self.verbose:
            print(message, file=self.stream or sys.stdout, flush=True)

    def train(self) -> Solver:
        """Run ``num_epochs`` epochs; returns ``self`` so results can be chained."""
        self._reset()
        n = int(self.X_train.shape[0])
        steps_per_epoch = max(1, math.ceil(n / self.batch_size))
        num_iterations = self.num_epochs * steps_per_epoch
        full_batch = self.batch_size >= n
        start = time.perf_counter()
        self._check_epoch(0.0)  # the untrained model's accuracy: CS231n's histories start there
        t = 0
        for epoch in range(1, self.num_epochs + 1):
            order = self._rng.permutation(n)
            for i in range(steps_per_epoch):
                # A full batch needs no gather: the row order does not change the gradient.
                if full_batch:
                    self._step(self.X_train, self.y_train)
                else:
                    rows = order[i * self.batch_size : (i + 1) * self.batch_size]
                    self._step(self._rows(self.X_train, rows), self._rows(self.y_train, rows))
                if t % self.print_every == 0:
                    self._log(f"(Iteration {t + 1} / {num_iterations}) loss: {self.loss_history[-1]:f}")
                t += 1
            for config in self.optim_configs.values():
                if "learning_rate" in config:
                    config["learning_rate"] *= self.lr_decay
            self.epoch = epoch
            self._check_epoch(time.perf_counter() - start)
            self._save_checkpoint()
        self.model.params = dict(self.best_params)
        return self

    def _check_epoch(self, elapsed: float) -> None:
        train_acc = self.check_accuracy(self.X_train, self.y_train, num_samples=self.num_train_samples)
        val_acc = self.check_accuracy(self.X_val, self.y_val, num_samples=self.num_val_samples)
        self.train_acc_history.append(train_acc)
        self.val_acc_history.append(val_acc)
        # Ties go to the later epoch: as good on validation, and trained longer
        # (small validation sets tie often). Updates build new arrays and never
        # write in place, so keeping references is a snapshot.
        if val_acc >= self.best_val_acc:
            self.best_val_acc, self.best_epoch = val_acc, self.epoch
            self.best_params = dict(self.model.params)
        if self.epoch % self.print_epoch_every == 0 or self.epoch == self.num_epochs:
            self._log(
                f"(Epoch {self.epoch} / {self.num_epochs}) train acc: {train_acc:f}; "
                f"val_acc: {val_acc:f}  ({elapsed:.1f} s)"
            )

    def _save_checkpoint(self) -> None:
        """Pickle the model and the history, as CS231n's Solver does (rule by name)."""
        if self.checkpoint_name is None:
            return
        checkpoint = {
            "model": self.model,
            "update_rule": getattr(self.update_rule, "__name__", repr(self.update_rule)),
            "lr_decay": self.lr_decay,
            "optim_config": self.optim_config,
            "batch_size": self.batch_size,
            "num_train_samples": self.num_train_samples,
            "num_val_samples": self.num_val_samples,
            "epoch": self.epoch,
            "loss_history": self.loss_history,
            "train_acc_history": self.train_acc_history,
            "val_acc_history": self.val_acc_history,
        }
        filename = f"{self.checkpoint_name}_epoch_{self.epoch}.pkl"
        self._log(f'Saving checkpoint to "{filename}"')
        with open(filename, "wb") as fh:
            pickle.dump(checkpoint, fh)


def _optional_count(value: Any, name: str) -> int | None:
    """``None`` or a positive integer (a number of rows)."""
    return None if value is None else check_positive_int(value, name)
