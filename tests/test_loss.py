"""CLiF-VQA loss (Eqs. 14-16) against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from clifvqa.train.loss import clifvqa_loss, linearity_loss, monotonicity_loss


def test_three_items_by_hand():
    # pred q̂ = [0.5, 1.0, 2.0], MOS q = [1, 3, 2]. Ordered pairs (i, j), term
    # max(0, |q_i - q_j| - f * (q̂_i - q̂_j)):
    #   (0,1): 2 - (-1)(-0.5) = 1.5    (1,0): 2 - (1)(0.5) = 1.5
    #   (0,2): 1 - (-1)(-1.5) = -0.5→0 (2,0): 1 - (1)(1.5) = -0.5→0
    #   (1,2): 1 - (1)(-1) = 2         (2,1): 1 - (-1)(1) = 2
    #   diagonal terms are 0.  Sum 7, m^2 = 9.
    pred = torch.tensor([0.5, 1.0, 2.0])
    mos = torch.tensor([1.0, 3.0, 2.0])
    assert monotonicity_loss(pred, mos).item() == pytest.approx(7 / 9, abs=1e-6)
    # centred pred [-2/3, -1/6, 5/6], centred MOS [-1, 1, 0]: sum pq = 0.5, sum p^2 = 7/6,
    # sum q^2 = 2, so PLCC = 0.5 / sqrt(7/3) = 0.327327.
    plcc = 0.5 / math.sqrt(7 / 3)
    assert linearity_loss(pred, mos).item() == pytest.approx((1 - plcc) / 2, abs=1e-6)
    assert clifvqa_loss(pred, mos).item() == pytest.approx(7 / 9 + (1 - plcc) / 2, abs=1e-6)
    assert clifvqa_loss(pred, mos, alpha=2.0, beta=0.5).item() == pytest.approx(14 / 9 + (1 - plcc) / 4, abs=1e-6)


def test_ties_count_absolute_difference():
    # q_0 == q_1: f = 1 both ways, terms max(0, 0.3) + max(0, -0.3) = |q̂_0 - q̂_1| = 0.3; m^2 = 4.
    pred = torch.tensor([0.0, 0.3])
    mos = torch.tensor([2.0, 2.0])
    assert monotonicity_loss(pred, mos).item() == pytest.approx(0.3 / 4, abs=1e-7)
    # constant labels: correlation taken as 0 -> L_lin = 0.5, no NaN.
    assert linearity_loss(pred, mos).item() == pytest.approx(0.5, abs=1e-7)


def test_perfect_prediction_is_zero_loss():
    mos = torch.tensor([1.0, 4.0, 2.5, 3.0])
    # q̂ = q: every hinge term is max(0, |d| - |d|) = 0, PLCC = 1.
    assert clifvqa_loss(mos.clone(), mos).item() == pytest.approx(0.0, abs=1e-6)


def test_batch_of_one_and_constant_predictions_are_finite_without_gradient():
    pred = torch.tensor([0.7], requires_grad=True)
    loss = clifvqa_loss(pred, torch.tensor([3.0]))
    loss.backward()
    assert loss.item() == pytest.approx(0.5)  # L_mon = 0 (only i = j), L_lin = 0.5
    assert pred.grad is not None and torch.all(pred.grad == 0)

    pred = torch.full((4,), 0.2, requires_grad=True)
    mos = torch.tensor([1.0, 2.0, 3.0, 4.0])
    loss = linearity_loss(pred, mos)
    loss.backward()
    assert loss.item() == pytest.approx(0.5)
    assert torch.isfinite(pred.grad).all()


def test_gradient_matches_finite_difference():
    pred = torch.tensor([0.5, 1.0, 2.0, -0.3], dtype=torch.float64, requires_grad=True)
    mos = torch.tensor([1.0, 3.0, 2.0, 1.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: clifvqa_loss(p, mos), (pred,))


def test_shape_errors_are_explained():
    with pytest.raises(ValueError, match="3 predictions but 2 targets"):
        clifvqa_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="empty batch"):
        clifvqa_loss(torch.zeros(0), torch.zeros(0))
