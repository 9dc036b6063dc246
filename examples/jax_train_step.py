"""A JAX training loop whose loss is xsoftmax.jax.cross_entropy (a custom_vjp), under jit and value_and_grad.

Run it: ``python examples/jax_train_step.py``. It fits a linear classifier
to separable synthetic data and prints the loss, which falls.
"""

import jax
import jax.numpy as jnp

from xsoftmax.jax import cross_entropy

N, D, C = 2048, 32, 10
k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
centers = jax.random.normal(k1, (C, D)) * 3
y = jax.random.randint(k2, (N,), 0, C)
x = centers[y] + jax.random.normal(k3, (N, D))
params = {"w": jnp.zeros((D, C)), "b": jnp.zeros(C)}


def loss_fn(params, x, y):
    return cross_entropy(x @ params["w"] + params["b"], y, label_smoothing=0.05)


@jax.jit
def train_step(params, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    return jax.tree.map(lambda p, g: p - 0.5 * g, params, grads), loss


for step in range(30):
    params, loss = train_step(params, x, y)
    if step % 10 == 0 or step == 29:
        print(f"step {step:2d}  loss {float(loss):.4f}")
