"""CS231n's two-layer network, on xsoftmax: spiral data, a gradient check, training, a plot.

The code is written as in the assignments (a ``data`` dict, ``TwoLayerNet``,
the ``lambda _: model.loss(X, y)[0]`` gradient check, ``Solver``); only the
imports differ. Run it from anywhere:

    python examples/cs231n_walkthrough.py            # writes cs231n_walkthrough.png here
    python examples/cs231n_walkthrough.py --backend torch --out /tmp/plots

Without matplotlib it trains and prints, and skips the plot.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib

import numpy as np

import xsoftmax as xs
from xsoftmax.gradcheck import numerical_gradient as eval_numerical_gradient
from xsoftmax.gradcheck import rel_error
from xsoftmax.nets import TwoLayerNet
from xsoftmax.train import Solver


def loss_of_parameter(model, name, X, y):
    """``w ↦ loss`` with ``model.params[name] = w``: the gradient check for immutable arrays (JAX)."""

    def f(w):
        saved = model.params[name]
        model.params[name] = w
        try:
            return model.loss(X, y)[0]
        finally:
            model.params[name] = saved

    return f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy", help="numpy, torch, jax, cupy, ... (default numpy)")
    parser.add_argument("--out", default=".", help="folder for cs231n_walkthrough.png (default: here)")
    args = parser.parse_args()
    xs.set_backend(args.backend)  # fails at once, with the reason, if the backend is unusable here

    # 1. Data: 3 interleaved spirals of 100 points (CS231n's toy data), plus a validation draw.
    data = xs.datasets.spiral(num_per_class=100, num_classes=3, seed=0)
    for k, v in data.items():
        print(f"{k}: {tuple(v.shape)}")

    # 2. Gradient check, as in the notebooks: a small float64 net, every parameter.
    #    The lambda ignores its argument; xsoftmax perturbs model.params[name] in place.
    #    JAX, Dask and array-api-strict arrays cannot change in place: f must use its argument.
    #    Every 15th point from the 7th: 20 points of all three arms, none at the shared centre,
    #    where h = XW1 + b1 sits exactly on ReLU's kink (no finite difference is right there).
    X, y = data["X_train"][7::15], data["y_train"][7::15]
    model = TwoLayerNet(input_dim=2, hidden_dim=10, num_classes=3, weight_scale=1e-1, reg=1e-2,
                        dtype="float64", seed=0)
    X = xs.asarray(X, dtype="float64")
    loss, grads = model.loss(X, y)
    print(f"initial loss {float(loss):.4f} (log 3 = {np.log(3):.4f})")
    for name in sorted(grads):
        if args.backend in ("numpy", "cupy", "torch"):
            f = lambda _: model.loss(X, y)[0]  # noqa: E731 (CS231n's idiom, kept as written there)
        else:
            f = loss_of_parameter(model, name, X, y)
        grad_num = eval_numerical_gradient(f, model.params[name])
        error = rel_error(grad_num, grads[name])
        print(f"{name} relative error: {error:.2e}")
        assert error < 1e-6, f"{name}: analytic and numerical gradients disagree ({error:.2e})"

    # 3. Train with RMSProp, full batches, CS231n's Solver arguments.
    model = TwoLayerNet(input_dim=2, hidden_dim=100, num_classes=3, weight_scale=1e-2, reg=1e-4, seed=0)
    solver = Solver(model, data, update_rule="rmsprop", optim_config={"learning_rate": 1e-2},
                    lr_decay=0.99, batch_size=300, num_epochs=300, print_every=100, verbose=True,
                    print_epoch_every=100)
    solver.train()
    print(f"best validation accuracy {solver.best_val_acc:.3f} (epoch {solver.best_epoch})")
    assert solver.best_val_acc > 0.9, "the spiral should be learned to over 90% validation accuracy"

    # 4. Plot: loss, accuracies, and the decision regions.
    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc, ax_regions) = plt.subplots(1, 3, figsize=(15, 4.5), layout="constrained")
    ax_loss.plot(solver.loss_history)
    ax_loss.set(xlabel="iteration", ylabel="loss", yscale="log", title="training loss")
    ax_acc.plot(solver.train_acc_history, label="train")
    ax_acc.plot(solver.val_acc_history, label="val")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="classification accuracy")
    ax_acc.legend()
    Xh, yh = xs.to_numpy(data.X_train), xs.to_numpy(data.y_train)
    gx, gy = np.meshgrid(np.linspace(-1.1, 1.1, 200), np.linspace(-1.1, 1.1, 200))
    grid = xs.asarray(np.column_stack([gx.ravel(), gy.ravel()]), dtype="float32")
    regions = xs.to_numpy(model.predict(grid)).reshape(gx.shape)
    ax_regions.contourf(gx, gy, regions, levels=[-0.5, 0.5, 1.5, 2.5], cmap="Spectral", alpha=0.4)
    ax_regions.scatter(Xh[:, 0], Xh[:, 1], c=yh, s=10, cmap="Spectral", edgecolors="k", linewidths=0.3)
    ax_regions.set(title="decision regions", aspect="equal")
    path = pathlib.Path(args.out) / "cs231n_walkthrough.png"
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
