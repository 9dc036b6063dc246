"""A PyTorch training loop whose loss is xsoftmax.torch.cross_entropy (a drop-in for F.cross_entropy).

Run it: ``python examples/torch_train_step.py``. It fits a linear classifier
to separable synthetic data and prints the loss, which falls.
"""

import torch

from xsoftmax.torch import cross_entropy

torch.manual_seed(0)
N, D, C = 2048, 32, 10
centers = torch.randn(C, D) * 3
y = torch.randint(0, C, (N,))
x = centers[y] + torch.randn(N, D)

model = torch.nn.Linear(D, C)
opt = torch.optim.SGD(model.parameters(), lr=0.5)
for step in range(30):
    opt.zero_grad()
    loss = cross_entropy(model(x), y, label_smoothing=0.05)  # forward computes the gradient too
    loss.backward()  # backward only scales it by grad_output
    opt.step()
    if step % 10 == 0 or step == 29:
        print(f"step {step:2d}  loss {loss.item():.4f}")
