"""Tractable quantities: score by autograd (no parameter grads touched), log-ratios."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ebmlab


class QuadraticNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return 0.5 * self.lin(x).pow(2).sum(1)


def test_score_is_minus_grad_energy_and_leaves_parameters_alone():
    torch.manual_seed(0)
    net = QuadraticNet()
    x = torch.randn(5, 3)
    s = ebmlab.score(net, x)
    # closed form: E = |Wx + b|^2/2, grad = W^T (Wx + b)
    W, b = net.lin.weight.detach(), net.lin.bias.detach()
    assert torch.allclose(s, -(x @ W.T + b) @ W, atol=1e-6)
    assert not s.requires_grad
    assert all(p.grad is None for p in net.parameters())


def test_score_inside_a_training_step_keeps_existing_parameter_grads():
    torch.manual_seed(0)
    net = QuadraticNet()
    net(torch.randn(4, 3)).sum().backward()
    before = [p.grad.clone() for p in net.parameters()]
    ebmlab.score(net, torch.randn(4, 3))
    assert all(torch.equal(a, p.grad) for a, p in zip(before, net.parameters()))


def test_log_ratio_is_energy_difference():
    energy = lambda x: 0.5 * (x**2).sum(1)  # noqa: E731
    x1, x2 = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    # log p(x1)/p(x2) = E(x2) - E(x1) = 1: x1 is e times more probable.
    assert torch.allclose(ebmlab.log_ratio(energy, x1, x2), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="same shape"):
        ebmlab.log_ratio(energy, x1, torch.zeros(2, 2))


def test_bad_inputs_are_named():
    energy = lambda x: (x**2).sum(1)  # noqa: E731
    with pytest.raises(ValueError, match=r"\(batch, \*event\)"):
        ebmlab.score(energy, torch.zeros(3))
    with pytest.raises(TypeError, match="floating-point"):
        ebmlab.score(energy, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must return shape \(batch,\) = \(3,\)"):
        ebmlab.score(lambda x: x, torch.zeros(3, 2))
