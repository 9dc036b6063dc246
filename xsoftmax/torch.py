r"""PyTorch adapters: ``cross_entropy`` and ``CrossEntropyLoss`` backed by xsoftmax's engines.

Drop-ins for ``torch.nn.functional.cross_entropy`` and
``torch.nn.CrossEntropyLoss`` (same names, defaults and semantics, values and
gradients; float16, bfloat16, float32, float64), for logits ``(N, C)`` or
``(N, C, d1, …, dk)`` (class axis 1) with class-index targets ``(N,)`` /
``(N, d1, …, dk)`` or class-probability targets of the logits' shape (chosen,
as torch does, by ``target.shape == input.shape``), plus the keyword-only
``z_loss`` and ``softcap`` of :func:`xsoftmax.softmax_loss`::

    from xsoftmax.torch import cross_entropy
    loss = cross_entropy(logits, target)      # ignore_index=-100, reduction="mean"
    loss.backward()

How. The forward pass computes the loss *and* its gradient

.. math::  G_{ik} = ∂\text{loss}/∂s_{ik} = [(c_i + zc_i\,lse_i) p_{ik} − a_i T_{ik} − b_i w_k]\, g_{ik}

(``T_ik = 1[k = y_i]`` or ``w_k q_ik``; ``zc`` the z-loss, ``g = 1 − tanh²(s/c)`` the softcap:
:mod:`xsoftmax._reduction`)

(``(softmax(s) − onehot(y)) / N`` in the plain case) in one pass of the
fastest engine for the tensors' device (:mod:`xsoftmax._routing`): the NumPy
engine on zero-copy views of CPU tensors, the CuPy engine through DLPack for
CUDA tensors, the reference code otherwise. It keeps ``G`` and backward
returns ``grad_output · G`` (``G`` itself when ``grad_output`` is exactly 1;
row ``i`` scaled by ``grad_output[i]`` for ``reduction="none"``): no softmax
is recomputed. ``G`` is a new tensor of every call, released with the graph
(after backward, or when the loss is dropped). Double backward raises
(``once_differentiable``); ``weight`` receives no gradient, as in torch.

``ignore_index`` is torch's (default -100): rows whose label equals it count
for nothing; any other label outside ``[0, C)`` is a ``ValueError`` naming
``target``. When no label equals it, the engine runs its faster path for
uniform rows. With probability targets torch's rule holds: a negative
``ignore_index`` (the default) is ignored, one ``>= 0`` is a ``ValueError``.

``inplace_backward=True`` writes ``G`` into the storage of ``input`` itself,
so nothing of size N x C is allocated (float16 / float32 / float64 on the
CPU; bfloat16 computes in float32 and copies back). It is safe only when
nothing reads the logits afterwards: the caller does not use them, and no
other operation saved them for its backward — true of logits straight out of
``nn.Linear`` or a matmul (they save their inputs, not their output); not
true after ``exp``, ``sigmoid``, ``tanh``, ``softmax`` or a custom op that
saves its output. The tensor's version counter is bumped, so torch raises
("modified by an inplace operation") instead of computing with overwritten
logits wherever it can tell.

Threads: on the CPU the NumPy engine shares the cores with torch's OpenMP
pool, whose idle workers spin for a while after each torch operation; see
:data:`NUMPY_THREADS` and ``docs/adapters.md``.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from . import _routing
from ._dispatch import dispatch_softmax_loss as softmax_loss
from ._torch_linear import LinearCrossEntropyLoss, linear_cross_entropy

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss", "cross_entropy", "linear_cross_entropy"]

#: Threads of the NumPy engine under the torch adapter. None: the engine's own
#: default, capped by ``torch.get_num_threads()`` (a training loop that limits
#: torch's threads limits ours too, and the two pools then do not fight for
#: the cores: :func:`numpy_threads`).
NUMPY_THREADS: int | None = None


def numpy_threads() -> int | None:
    """The NumPy engine's thread count under the adapter (None: its default, with its short-row rule)."""
    if NUMPY_THREADS is not None:
        return NUMPY_THREADS
    from ._engines.numpy import default_num_threads

    torch_threads = torch.get_num_threads()
    return None if torch_threads >= default_num_threads() else torch_threads


def _engine_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int | None,
    reduction: str,
    label_smoothing: float,
    out: torch.Tensor | None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, G)`` of detached inputs by the fastest engine for their device; ``G`` in ``out`` if given."""
    options: dict[str, Any] = dict(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap,
    )  # fmt: skip
    path = _routing.choose_path(_routing.inspect_scores(input, grad_enabled=False))
    if path == _routing.NUMPY_VIEWS:
        return _numpy_loss(input, target, weight, out, options)
    result = _routing.run_path(path, input, target, weight=weight, out=out, **options)
    if result is None:
        result = softmax_loss(input, target, weight=weight, engine="reference", out=out, **options)
    return result


def _numpy_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    out: torch.Tensor | None,
    options: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The NumPy engine on zero-copy views of CPU tensors (bfloat16 through float32).

    ``(N, C)`` logits call the engine directly (with :func:`numpy_threads`);
    K-dimensional ones go through the library's own rows of positions.
    """
    from ._engines.numpy import softmax_loss as numpy_engine
    from ._validate import check_loss_inputs

    view = _routing.numpy_view
    s = view(input)
    out_view = None
    if out is not None and out.dtype != torch.bfloat16:
        out_view = view(out)
    elif out is not None:
        out_view = s  # the float32 copy of the bfloat16 logits: written in place, copied back below
    yv, wv = view(target), None if weight is None else view(weight)
    if s.ndim == 2:
        inp = check_loss_inputs(s, yv, weight=wv, engine="fused", **options)
        loss, d = numpy_engine(inp, out=out_view, num_threads=numpy_threads())
    else:
        loss, d = softmax_loss(s, yv, weight=wv, engine="fused", out=out_view, **options)
    loss_t = _routing.from_numpy_like(loss, input)
    if out is None:
        return loss_t, _routing.from_numpy_like(d, input)
    if out.dtype == torch.bfloat16:
        out.copy_(torch.from_numpy(d))
    return loss_t, out


class _SoftmaxLossFunction(torch.autograd.Function):
    """``(loss, G)`` with ``G`` kept for backward; ``ignore_index`` in xsoftmax's sense."""

    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        ignore_index: int | None,
        reduction: str,
        label_smoothing: float,
        inplace: bool,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = input.detach()
        w = None if weight is None else weight.detach()
        loss, d = _engine_loss(
            x, target, w, ignore_index, reduction, label_smoothing, x if inplace else None, z_loss, softcap
        )
        if inplace:
            # The logits are gone: let autograd's checks see that they changed.
            torch.autograd.graph.increment_version(input)
        ctx.reduction = reduction
        # The gradient output has no gradient: without this autograd would
        # hand backward an (N, C) tensor of zeros for it.
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(d)
        ctx.save_for_backward(d)
        return loss, d

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor | None, _grad_d: Any) -> tuple[Any, ...]:
        if torch.is_grad_enabled():
            # once_differentiable alone would return a gradient without a graph
            # when grad_output needs none: a silently wrong second derivative.
            raise RuntimeError(
                "xsoftmax.torch.cross_entropy is once differentiable: its gradient is computed in "
                "the forward pass, so double backward (create_graph=True) is not supported; use "
                "torch.nn.functional.cross_entropy where second derivatives are needed"
            )
        return _SoftmaxLossFunction._scaled(ctx, grad_loss)

    @staticmethod
    @once_differentiable
    def _scaled(ctx: Any, grad_loss: torch.Tensor | None) -> tuple[Any, ...]:
        """``grad_loss · G`` (per row, broadcast over the classes, for "none"; ``G`` itself for exactly 1)."""
        (d,) = ctx.saved_tensors
        if grad_loss is None:  # only dscores was used downstream: no gradient flows
            return (None,) * 9
        if ctx.reduction == "none":
            grad = d * grad_loss.to(d.dtype).unsqueeze(1)
        elif grad_loss.item() == 1:  # a 0-d tensor: the host reads it without a kernel
            # A new tensor is not needed: autograd clones what it cannot own (retain_graph).
            grad = d
        else:
            grad = d * grad_loss.to(d.dtype)
        return (grad,) + (None,) * 8


def _check_tensor(x: Any, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__module__}.{type(x).__qualname__}")


def _check_devices(**tensors: torch.Tensor | None) -> None:
    first: tuple[str, Any] | None = None
    for name, t in tensors.items():
        if t is None:
            continue
        if first is None:
            first = (name, t.device)
        elif t.device != first[1]:
            raise ValueError(
                f"inputs live on two devices: {first[0]} is on {first[1]} but {name} is on {t.device}; "
                f"move them with .to(device)"
            )


def _check_inputs(input: Any, target: Any, weight: Any) -> bool:
    """Shapes, dtypes and devices, in torch's argument names (input, target, weight).

    Returns whether ``target`` holds class probabilities: as in torch, when it
    has ``input``'s shape (it must then be floating); else class indices of
    ``input``'s shape without the class axis 1.
    """
    _check_tensor(input, "input")
    _check_tensor(target, "target")
    if weight is not None:
        _check_tensor(weight, "weight")
    if input.ndim < 2:
        raise ValueError(
            f"input must have shape (N, C) or (N, C, d1, ..., dk), got shape {tuple(input.shape)}"
        )
    if not input.dtype.is_floating_point:
        raise TypeError(f"input must have a floating dtype, got {input.dtype}")
    shape = tuple(input.shape)
    labels_shape = (shape[0], *shape[2:])
    probabilities = tuple(target.shape) == shape
    if probabilities and not target.dtype.is_floating_point:
        raise TypeError(
            f"target has input's shape {shape}, so it holds class probabilities and must have a "
            f"floating dtype, got {target.dtype}; class indices have shape {labels_shape}"
        )
    if not probabilities:
        if target.dtype.is_floating_point:
            raise ValueError(
                f"target of a floating dtype ({target.dtype}) holds class probabilities and must have "
                f"input's shape {shape}, got shape {tuple(target.shape)}; class indices need an "
                f"integer dtype and shape {labels_shape}"
            )
        if target.dtype == torch.bool or target.dtype.is_complex:
            raise TypeError(f"target must have an integer dtype, got {target.dtype}")
        if tuple(target.shape) != labels_shape:
            raise ValueError(
                f"target must have shape {labels_shape} (input's shape without the class axis 1) "
                f"for input of shape {shape}, got shape {tuple(target.shape)}"
            )
    if weight is not None and (weight.ndim != 1 or weight.shape[0] != input.shape[1]):
        raise ValueError(
            f"weight must have shape (C,) = ({input.shape[1]},), got shape {tuple(weight.shape)}"
        )
    _check_devices(input=input, target=target, weight=weight)
    return probabilities


def _probability_ignore_index(ignore_index: Any) -> None:
    """torch's rule for probability targets: a negative ``ignore_index`` is unused, ``>= 0`` an error."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    if int(ignore_index) >= 0:
        raise ValueError(
            f"ignore_index={ignore_index} is not supported with class-probability targets (target of "
            f"input's shape), as in torch; leave it at its default -100"
        )


def _xs_ignore_index(target: torch.Tensor, num_classes: int, ignore_index: Any) -> int | None:
    """torch's ``ignore_index`` as xsoftmax's: None when no label needs it.

    Labels outside ``[0, C)`` other than ``ignore_index`` raise a ``ValueError`` naming ``target``.
    """
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    ignore_index = int(ignore_index)
    needed = ignore_index if 0 <= ignore_index < num_classes else None
    if target.numel() == 0:
        return needed
    # NumPy's reductions on the view: torch's take milliseconds at N = 65536 (thread start-up).
    t = _routing.numpy_view(target) if target.device.type == "cpu" else target
    if int(t.min()) >= 0 and int(t.max()) < num_classes:
        return needed  # no label equals an out-of-range ignore_index: uniform rows
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(bad.any()):
        flat = int(torch.argmax(bad.reshape(-1).to(torch.int8)))
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(target.shape)))
        at = where[0] if len(where) == 1 else ", ".join(map(str, where))
        raise ValueError(
            f"target[{at}] = {int(target.reshape(-1)[flat])} is out of range: labels must be in "
            f"[0, {num_classes}) or ignore_index={ignore_index}"
        )
    return ignore_index


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace_backward: bool = False,
) -> torch.Tensor:
    """``torch.nn.functional.cross_entropy(input, target, ...)``, its gradient computed in the forward pass.

    ``input`` (N, C) or (N, C, d1, ..., dk) logits; ``target`` class indices
    (N,) / (N, d1, ..., dk) or class probabilities of ``input``'s shape (need
    not sum to 1); ``weight``, ``ignore_index``, ``reduction`` and
    ``label_smoothing`` as in torch. ``z_loss=ζ`` adds ``ζ · logsumexp(s)²``
    per counted position, ``softcap=c`` replaces the logits by ``c tanh(s/c)``
    first (:func:`xsoftmax.softmax_loss`). ``inplace_backward=True``
    overwrites ``input`` with the gradient (see the module docstring for when
    that is safe). Returns the loss: 0-d for "mean" / "sum", (N, d1, ..., dk)
    for "none".
    """
    if _check_inputs(input, target, weight):
        _probability_ignore_index(ignore_index)
        if target.requires_grad and torch.is_grad_enabled():
            # Its gradient (−w log p) is not formed: refuse rather than return none silently.
            raise ValueError(
                "target requires grad, but xsoftmax.torch.cross_entropy differentiates only input; "
                "pass target.detach(), or use torch.nn.functional.cross_entropy to differentiate targets"
            )
        xs_ignore = None
    else:
        xs_ignore = _xs_ignore_index(target, input.shape[1], ignore_index)
    if not isinstance(inplace_backward, bool):
        raise TypeError(f"inplace_backward must be a bool, got {inplace_backward!r}")
    loss, _ = _SoftmaxLossFunction.apply(
        input, target, weight, xs_ignore, reduction, label_smoothing, inplace_backward, z_loss, softcap
    )
    return loss


def _autograd_softmax_loss(
    scores: torch.Tensor,
    y: torch.Tensor,
    *,
    weight: torch.Tensor | None,
    reduction: str,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``xs.softmax_loss`` of a tensor that requires grad: a differentiable loss and ``dscores``."""
    return _SoftmaxLossFunction.apply(
        scores, y, weight, ignore_index, reduction, label_smoothing, False, z_loss, softcap
    )


class CrossEntropyLoss(torch.nn.Module):
    """Drop-in for ``torch.nn.CrossEntropyLoss`` (same constructor arguments) using :func:`cross_entropy`.

    ``z_loss``, ``softcap`` and ``inplace_backward`` (keyword-only) as in
    :func:`cross_entropy`; ``inplace_backward=True`` overwrites the logits with
    their gradient, see the module docstring for when that is safe.
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        inplace_backward: bool = False,
    ) -> None:
        super().__init__()
        if size_average is not None or reduce is not None:
            from torch.nn import _reduction

            reduction = _reduction.legacy_get_string(size_average, reduce)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.inplace_backward = inplace_backward

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            inplace_backward=self.inplace_backward,
        )
