r"""A float64 NumPy oracle for ``softmax_loss`` with every option it takes.

The one oracle of ``xsoftmax check``, ``xsoftmax bench`` and the tests
(``tests/_oracle.py`` re-exports it).

It is the specification the engines are tested against, written from the
formulas alone (not from xsoftmax's engines) and checked itself against
``torch.nn.functional.cross_entropy`` with autograd (``tests/test_oracle.py``).
The gradient is derived by hand, not by autodiff.

Shapes. ``scores`` is ``(N, C)`` or ``(N, C, d1, …, dk)`` (class axis 1).
Moving the class axis last and flattening gives ``R = N·d1⋯dk`` *rows* of
``C`` logits each; every formula below is per row ``i`` and the gradient is
moved back to ``scores``' layout at the end. ``y`` is either integer labels
``(N, d1, …, dk)`` or floating class probabilities of ``scores``' shape.

Per row, with ``z_i = c·tanh(s_i / c)`` under ``softcap=c`` (else ``z_i = s_i``),
``lse_i = log Σ_k exp(z_ik)`` and ``p_i = softmax(z_i)``:

* integer labels, ``v_i = 1[y_i ≠ ignore_index]``, smoothing ``ε``, weights ``w``
  (``w ≡ 1`` without), ``W = Σ_k w_k``::

      CE_i  = v_i [(1 − ε) w_{y_i} (lse_i − z_{i,y_i}) + (ε/C) Σ_k w_k (lse_i − z_ik)]
      dCE_i = v_i [(1 − ε) w_{y_i} (p_i − e_{y_i})     + (ε/C) (W p_i − w)]
      D_CE  = Σ_i v_i w_{y_i}                                   ("mean" denominator)

* probabilities ``q_i`` (need not sum to 1), ``q'_i = (1 − ε) q_i + ε/C``::

      CE_i  = Σ_k w_k q'_ik (lse_i − z_ik)
      dCE_i = (Σ_k w_k q'_ik) p_i − w ⊙ q'_i
      D_CE  = R                     (every row counts; "mean" ignores the weights)

* z-loss ``ζ`` (unweighted, ``v_i ≡ 1`` for probabilities)::

      Z_i = ζ v_i lse_i²,   dZ_i = 2 ζ v_i lse_i p_i,   D_Z = Σ_i v_i

The reported loss is ``Σ_i CE_i / D_CE + Σ_i Z_i / D_Z`` ("mean"; a zero
denominator gives NaN, as torch's 0/0), ``Σ_i (CE_i + Z_i)`` ("sum") or the
rows ``CE_i + Z_i`` reshaped to ``(N, d1, …, dk)`` ("none"). ``∂loss/∂z_i``
is ``dCE_i`` and ``dZ_i`` with the same scales; ignored rows get exactly 0.
Softcap chains it to the scores: ``∂loss/∂s_ik = ∂loss/∂z_ik · (1 − tanh²(s_ik/c))``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["oracle_log_softmax", "oracle_logsumexp", "oracle_softmax_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def _shift(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(z, m, l)`` along the last axis: ``z = s − m``, ``l = log Σ exp z`` (``lse = m + l``).

    Working with ``z`` keeps ``log p = z − l`` exact to float64 rounding even
    for logits of 1e4, where ``s − lse`` would cancel ~12 digits. A row of
    −inf has ``m`` reset to 0 so it gives ``l = −inf``, not NaN.
    """
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = s - m
    with np.errstate(divide="ignore"):
        return z, m, np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def oracle_logsumexp(s: np.ndarray, axis: int = -1) -> np.ndarray:
    """``log Σ exp s`` along ``axis`` in float64."""
    _, m, l = _shift(np.moveaxis(np.asarray(s, np.float64), axis, -1))  # noqa: E741
    return np.squeeze(m + l, -1)


def oracle_log_softmax(s: np.ndarray, axis: int = -1) -> np.ndarray:
    """``s − logsumexp(s)`` along ``axis`` in float64."""
    z, _, l = _shift(np.moveaxis(np.asarray(s, np.float64), axis, -1))  # noqa: E741
    return np.moveaxis(z - l, -1, axis)


def _rows(a: np.ndarray) -> np.ndarray:
    """``(N, C, d1, …, dk)`` → ``(N·d1⋯dk, C)``: class axis last, one row per position."""
    return np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])


def _unrows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`_rows` for an array of ``shape``."""
    moved = (shape[0], *shape[2:], shape[1])
    return np.moveaxis(rows.reshape(moved), -1, 1)


def _mean(total: float, denom: float) -> float:
    """``total / denom``, NaN when ``denom`` is 0 (torch's 0/0), without a warning."""
    return total / denom if denom != 0 else float("nan")


def _check(
    s: np.ndarray,
    y: np.ndarray,
    probabilities: bool,
    *,
    reduction: str,
    weight: np.ndarray | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> None:
    if s.ndim < 2:
        raise ValueError(f"scores: expected shape (N, C) or (N, C, d1, ..., dk), got {s.shape}")
    if probabilities:
        if y.shape != s.shape:
            raise ValueError(f"y: probabilities must have the scores' shape {s.shape}, got {y.shape}")
        if ignore_index is not None:
            raise ValueError(f"ignore_index={ignore_index} is not supported with probability targets")
    else:
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"y: expected integer labels or floating probabilities, got dtype {y.dtype}")
        expected = (s.shape[0], *s.shape[2:])
        if y.shape != expected:
            raise ValueError(f"y: expected labels of shape {expected} for scores {s.shape}, got {y.shape}")
        kept = y if ignore_index is None else y[y != ignore_index]
        if kept.size and (kept.min() < 0 or kept.max() >= s.shape[1]):
            raise ValueError(f"y: labels must lie in [0, {s.shape[1]}) or equal ignore_index")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    if weight is not None and weight.shape != (s.shape[1],):
        raise ValueError(f"weight: expected shape ({s.shape[1]},), got {weight.shape}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing}")
    if not z_loss >= 0.0:
        raise ValueError(f"z_loss: expected a value >= 0, got {z_loss}")
    if softcap is not None and not softcap > 0.0:
        raise ValueError(f"softcap: expected None or a value > 0, got {softcap}")


def oracle_softmax_loss(
    scores,
    y,
    *,
    reduction: str = "mean",
    weight=None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(loss, dscores)`` in float64 by the formulas of the module docstring.

    ``loss`` is 0-d for "mean"/"sum" and ``(N, d1, …, dk)`` for "none";
    ``dscores = ∂(reported loss)/∂scores`` has ``scores``' shape.
    """
    s_in = np.asarray(scores)
    y_in = np.asarray(y)
    probabilities = np.issubdtype(y_in.dtype, np.floating)
    w_in = None if weight is None else np.asarray(weight, dtype=np.float64)
    _check(
        s_in, y_in, probabilities, reduction=reduction, weight=w_in, ignore_index=ignore_index,
        label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
    )  # fmt: skip
    num_classes = s_in.shape[1]
    eps = float(label_smoothing)
    s = _rows(s_in.astype(np.float64))
    n_rows = s.shape[0]
    w = np.ones(num_classes) if w_in is None else w_in

    if softcap is not None:
        tanh = np.tanh(s / softcap)
        z = softcap * tanh
    else:
        z = s

    # lse and p with the row maximum as shift (reset to 0 when not finite: all -inf rows stay NaN).
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = np.max(z, axis=1) if num_classes else np.zeros(n_rows)
        m = np.where(np.isfinite(m), m, 0.0)
        e = np.exp(z - m[:, None])
        sigma = e.sum(axis=1)
        lse = m + np.log(sigma)
        p = e / sigma[:, None]
        nll = lse[:, None] - z  # −log p_ik; +inf at a −inf logit

        if probabilities:
            q = _rows(y_in.astype(np.float64))
            q = (1.0 - eps) * q + eps / num_classes if eps else q
            wq = w * q
            # 0 · inf = NaN where q' = 0 at a −inf logit, exactly as torch's −Σ w q log_softmax.
            ce = (wq * nll).sum(axis=1)
            dce = wq.sum(axis=1)[:, None] * p - wq
            valid = np.ones(n_rows, dtype=bool)
            ce_denom = float(n_rows)
        else:
            labels = y_in.reshape(-1).astype(np.int64)
            valid = np.ones(n_rows, dtype=bool) if ignore_index is None else labels != ignore_index
            safe = np.where(valid, labels, 0)  # an ignored label may be out of range
            rows = np.arange(n_rows)
            wy = np.where(valid, w[safe], 0.0)
            target = np.zeros_like(z)
            target[rows, safe] = 1.0
            ce = (1.0 - eps) * wy * nll[rows, safe]
            dce = (1.0 - eps) * wy[:, None] * (p - target)
            if eps:  # skipped at ε = 0: Σ_k w_k (lse − z_k) is +inf for a −inf logit
                ce = ce + (eps / num_classes) * (nll * w).sum(axis=1)
                dce = dce + (eps / num_classes) * (w.sum() * p - w)
            ce = np.where(valid, ce, 0.0)  # exactly 0, also where the row's logits are not finite
            dce = np.where(valid[:, None], dce, 0.0 * p)  # 0 · p: an all −inf row stays NaN
            ce_denom = float(wy.sum())

        if z_loss:
            zl = np.where(valid, z_loss * lse**2, 0.0)
            dzl = np.where(valid[:, None], (2.0 * z_loss * lse)[:, None] * p, 0.0 * p)
        else:
            zl = np.zeros(n_rows)
            dzl = np.zeros_like(p)
        z_denom = float(valid.sum())

        if reduction == "mean":
            ce_scale = 1.0 / ce_denom if ce_denom != 0 else float("nan")
            z_scale = 1.0 / z_denom if z_denom != 0 else float("nan")
            loss = np.asarray(_mean(ce.sum(), ce_denom) + (_mean(zl.sum(), z_denom) if z_loss else 0.0))
            dz = np.where(valid[:, None], ce_scale * dce + (z_scale * dzl if z_loss else 0.0), 0.0 * p)
        else:
            rows_loss = ce + zl
            dz = dce + dzl
            if reduction == "sum":
                loss = np.asarray(rows_loss.sum())
            else:
                loss = rows_loss.reshape((s_in.shape[0], *s_in.shape[2:]))

        if softcap is not None:
            dz = dz * (1.0 - tanh * tanh)  # ∂z/∂s = 1 − tanh²(s/c); 0 at ±inf and ±1e4
    return loss, _unrows(dz, s_in.shape)
