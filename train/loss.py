"""The CLiF-VQA training loss (paper Eqs. 14-16), exactly as the equations read.

``L = alpha * L_mon + beta * L_lin`` with

- ``L_mon = 1/m^2 * sum_i sum_j max(0, |q_i - q_j| - f(q_i, q_j) * (q̂_i - q̂_j))`` over all
  ordered pairs, i = j included (those terms are 0); ``f = 1`` if ``q_i >= q_j`` else ``-1``.
  For tied labels f is 1 both ways, so the pair contributes ``|q̂_i - q̂_j|``.
- ``L_lin = (1 - PLCC(q̂, q)) / 2``.

Degenerate batches never give NaN: when the predictions or the labels are constant (a batch of
one in particular) the correlation is taken as 0, so ``L_lin = 0.5`` with zero gradient. A batch
of one therefore yields ``0.5 * beta`` and no gradient at all; the trainer skips such batches.
"""

from __future__ import annotations

import torch

# Added to the squared PLCC denominator, so sqrt never sees 0 (finite gradient) while ordinary
# inputs keep their exact value: (1e-8)^2 is far below any real sum of squares in float32.
_PLCC_EPS2 = 1e-16


def monotonicity_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 14: the pairwise hinge loss over all ``m^2`` ordered pairs (``pred``, ``target``: [m])."""
    pred, target = _flat_pair(pred, target)
    dq = target[:, None] - target[None, :]  # q_i - q_j
    dp = pred[:, None] - pred[None, :]  # q̂_i - q̂_j
    sign = torch.where(dq >= 0, 1.0, -1.0).to(pred.dtype)
    m = pred.numel()
    return torch.clamp(dq.abs() - sign * dp, min=0).sum() / (m * m)


def linearity_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 15: ``(1 - PLCC(pred, target)) / 2``; 0.5 when either side is constant."""
    pred, target = _flat_pair(pred, target)
    p = pred - pred.mean()
    q = target - target.mean()
    den = torch.sqrt((p * p).sum() * (q * q).sum() + _PLCC_EPS2)
    return (1 - (p * q).sum() / den) / 2


def clifvqa_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """Eq. 16: ``alpha * L_mon + beta * L_lin`` for one batch (``pred``, ``target``: [m], m >= 1)."""
    return alpha * monotonicity_loss(pred, target) + beta * linearity_loss(pred, target)


def _flat_pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred = pred.reshape(-1)
    target = target.reshape(-1).to(pred.dtype)
    if pred.numel() != target.numel():
        raise ValueError(f"loss: {pred.numel()} predictions but {target.numel()} targets")
    if pred.numel() == 0:
        raise ValueError("loss: empty batch (the loss needs at least one item)")
    return pred, target
