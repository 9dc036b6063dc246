r"""PyTorch adapter of the fused linear + softmax loss (re-exported by ``xsoftmax.torch``).

``linear_cross_entropy(input, linear_weight, target, linear_bias=None, ...)``
equals ``F.cross_entropy(F.linear(input, linear_weight, linear_bias), target,
...)`` with ``linear_weight`` ``(C, D)`` as in ``nn.Linear``, but the ``(N, C)``
logits exist one row chunk at a time (:mod:`xsoftmax._linear`).

* "mean" and "sum": the forward pass computes the loss *and* the gradients
  of ``input``, ``linear_weight`` and ``linear_bias``; backward multiplies
  them by ``grad_output``.
* "none": the upstream gradient ``γ_i`` differs per row and is unknown in
  forward, so forward keeps only the row log-sum-exp ``lse_i``; backward
  recomputes each chunk's logits and ``p_ik = exp(s_ik − lse_i)`` and forms
  ``γ_i ∂loss_i/∂s_i`` chunk by chunk, still without ``N × C`` memory.

CPU tensors of NumPy dtypes run the NumPy engine on zero-copy views; other
tensors (CUDA, bfloat16) run the generic code on torch tensors. Double
backward (``create_graph=True``) raises a ``RuntimeError`` that says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._linear import check_linear_inputs, linear_lse_forward, linear_none_backward, linear_softmax_loss

__all__ = ["LinearCrossEntropyLoss", "linear_cross_entropy"]


def _host(t: torch.Tensor | None) -> bool:
    return t is None or (t.device.type == "cpu" and t.dtype != torch.bfloat16)


def _view(t: torch.Tensor | None, numpy: bool) -> Any:
    """A zero-copy NumPy view of a CPU tensor (``numpy``), else the detached tensor."""
    if t is None:
        return None
    t = t.detach()
    return t.numpy() if numpy else t


def _tensor(a: Any, like: torch.Tensor) -> Any:
    if a is None or isinstance(a, torch.Tensor):
        return a
    return torch.from_numpy(np.asarray(a)).to(like.device)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        linear_weight: torch.Tensor,
        linear_bias: torch.Tensor | None,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        ignore_index: int | None,
        reduction: str,
        label_smoothing: float,
        chunk_rows: int | None,
        z_loss: float,
        softcap: float | None,
    ) -> torch.Tensor:
        numpy = all(_host(t) for t in (x, linear_weight, linear_bias, target, weight))
        args = [_view(t, numpy) for t in (x, linear_weight, linear_bias, target, weight)]
        xv, wv, bv, yv, weightv = args
        options = dict(
            reduction=reduction, weight=weightv, ignore_index=ignore_index,
            label_smoothing=label_smoothing, chunk_rows=chunk_rows, z_loss=z_loss, softcap=softcap,
        )  # fmt: skip
        ctx.reduction = reduction
        ctx.has_bias = linear_bias is not None
        if reduction != "none":
            loss, dx, dw, db = linear_softmax_loss(xv, wv.T, bv, yv, **options)
            dx, dw, db = (_tensor(a, x) for a in (dx, dw, db))
            ctx.save_for_backward(dx, dw.T, db)
            return _tensor(loss, x)
        p = check_linear_inputs(xv, wv.T, bv, yv, **options)
        rows, lse = linear_lse_forward(p)
        ctx.problem = p
        ctx.save_for_backward(x, linear_weight, linear_bias, target, weight, _tensor(lse, x))
        return _tensor(rows, x).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        if torch.is_grad_enabled():  # backward(create_graph=True): a gradient of the gradient
            raise RuntimeError(
                "linear_cross_entropy is differentiable once: its backward computes no graph, so "
                "double backward (create_graph=True, higher-order gradients) is not supported"
            )
        none = (None,) * 8
        if ctx.reduction != "none":
            dx, dW, db = ctx.saved_tensors
            return (dx * grad, dW * grad, db * grad if ctx.has_bias else None) + none
        x, linear_weight, _, _, _, lse = ctx.saved_tensors  # saved: autograd checks for in-place edits
        p = ctx.problem
        numpy = isinstance(p.x, np.ndarray)
        gv = _view(grad, numpy)
        lv = _view(lse, numpy)
        dx, dw, db = linear_none_backward(p, lv, gv)
        dx, dw, db = (_tensor(a, x) for a in (dx, dw, db))
        return (dx.to(x.dtype), dw.T.to(linear_weight.dtype), None if db is None else db.to(x.dtype)) + none


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    linear_bias: torch.Tensor | None = None,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    r"""``F.cross_entropy(F.linear(input, linear_weight, linear_bias), target, ...)`` in row chunks.

    ``input`` ``(…, D)`` (a language model's ``(B, T, D)`` hidden states),
    ``linear_weight`` ``(C, D)``, ``linear_bias`` ``(C,)`` or None, ``target``
    ``(…)`` integer labels; ``weight``, ``ignore_index``, ``reduction`` and
    ``label_smoothing`` as in ``torch.nn.functional.cross_entropy``;
    ``z_loss`` and ``softcap`` as in :func:`xsoftmax.softmax_loss`.
    ``chunk_rows``: rows of logits per chunk (default: about 1/16 of them,
    see :func:`xsoftmax.linear_softmax_loss`). Returns a 0-d loss, or the
    ``(…)`` row losses for "none", differentiable once.
    """
    if input.ndim < 1 or target.shape != input.shape[:-1]:
        raise ValueError(
            f"target must have input's shape without its last axis: input has shape "
            f"{tuple(input.shape)}, target has shape {tuple(target.shape)}"
        )
    d = input.shape[-1]
    if linear_weight.ndim != 2 or linear_weight.shape[1] != d:
        raise ValueError(
            f"input (..., D) and linear_weight (C, D) do not chain: input has shape {tuple(input.shape)}, "
            f"linear_weight has shape {tuple(linear_weight.shape)} (expected (C, {d}))"
        )
    x = input.reshape(-1, d)
    y = target.reshape(-1)
    if ignore_index is not None and y.numel() and not bool((y == ignore_index).any()):
        ignore_index = None  # no row is ignored: the same numbers without the per-row masks
    loss = _LinearCrossEntropy.apply(
        x, linear_weight, linear_bias, y, weight, ignore_index, reduction, label_smoothing, chunk_rows,
        z_loss, softcap,
    )  # fmt: skip
    return loss.reshape(target.shape) if reduction == "none" else loss


class LinearCrossEntropyLoss(torch.nn.Module):
    """``nn.Module`` form of :func:`linear_cross_entropy`.

    ``forward(input, linear_weight, target, linear_bias=None)`` takes the function's order.
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        chunk_rows: int | None = None,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.chunk_rows = chunk_rows
        self.z_loss = z_loss
        self.softcap = softcap

    def forward(
        self,
        input: torch.Tensor,
        linear_weight: torch.Tensor,
        target: torch.Tensor,
        linear_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return linear_cross_entropy(
            input, linear_weight, target, linear_bias,
            weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            chunk_rows=self.chunk_rows,
        )  # fmt: skip
