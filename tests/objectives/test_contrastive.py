"""The contrastive loss is the maximum-likelihood gradient; the buffer behaves as documented."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ebmlab.objectives import ReplayBuffer, contrastive_divergence, start_negatives
from ebmlab.samplers import DivergenceError


class IsoGaussian(nn.Module):
    """E(x) = exp(s)/2 |x - mu|^2: N(mu, exp(-s) I), log Z = -d s/2 + const."""

    def __init__(self, d: int):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(d, dtype=torch.float64))
        self.s = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))

    def forward(self, x):
        return 0.5 * self.s.exp() * ((x - self.mu) ** 2).sum(1)


def test_loss_gradient_is_the_ml_gradient_with_exact_negatives():
    torch.manual_seed(0)
    d, n_pos, n_neg = 3, 500, 200_000
    model = IsoGaussian(d)
    with torch.no_grad():
        model.mu.copy_(torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64))
        model.s.fill_(0.3)
    g = torch.Generator().manual_seed(1)
    x_pos = torch.randn((n_pos, d), generator=g, dtype=torch.float64) * 1.3 + 1.0
    sd = math.exp(-0.15)
    x_neg = model.mu.detach() + sd * torch.randn((n_neg, d), generator=g, dtype=torch.float64)  # exact p_theta draws
    loss, _ = contrastive_divergence(model, x_pos, x_neg, alpha=0.0)
    loss.backward()
    # Closed-form gradient of the mean NLL: d/dmu = -e^s mean(x - mu); d/ds = e^s/2 mean|x - mu|^2 - d/2.
    es = math.exp(0.3)
    mu = model.mu.detach()
    g_mu = -es * (x_pos - mu).mean(0)
    g_s = 0.5 * es * ((x_pos - mu) ** 2).sum(1).mean() - d / 2
    # The only randomness left is the negatives' Monte Carlo average: SE from n_neg.
    se_mu = es * sd / math.sqrt(n_neg)
    se_s = 0.5 * es * sd**2 * math.sqrt(2 * d) / math.sqrt(n_neg)
    assert torch.all((model.mu.grad - g_mu).abs() < 4 * se_mu)
    assert abs(float(model.s.grad - g_s)) < 4 * se_s


def test_regulariser_and_metrics():
    energy = lambda x: x.sum(1)  # noqa: E731
    x_pos, x_neg = torch.ones(4, 2), 2 * torch.ones(4, 2)
    loss, m = contrastive_divergence(energy, x_pos, x_neg, alpha=0.5)
    # E+ = 2, E- = 4: loss = 2 - 4 + 0.5 * (4 + 16) = 8
    assert float(loss) == pytest.approx(8.0)
    assert float(m["energy_gap"]) == pytest.approx(2.0) and float(m["regulariser"]) == pytest.approx(20.0)


def test_non_finite_energy_is_an_error_not_a_zero():
    energy = lambda x: x.sum(1).log()  # noqa: E731  (NaN for negative sums)
    with pytest.raises(DivergenceError):
        contrastive_divergence(energy, torch.ones(4, 2), -torch.ones(4, 2))


def _noise(n, generator):
    return torch.rand((n, 2), generator=generator) * 10 + 100  # far from anything stored


def test_buffer_reinitialises_at_the_stated_rate():
    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(1000, lambda n, gen: torch.zeros((n, 2)), reinit_prob=0.05, generator=g)
    buf.noise = _noise  # fresh draws are now recognisable
    fresh, draws = 0, 0
    for _ in range(200):
        x, _ = buf.sample(100, generator=g)
        fresh += int((x[:, 0] >= 100).sum())
        draws += 100
    se = math.sqrt(0.05 * 0.95 / draws)
    assert abs(fresh / draws - 0.05) < 4 * se


def test_buffer_capacity_update_and_state_roundtrip():
    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(8, lambda n, gen: torch.zeros((n, 2)), reinit_prob=0.0, generator=g)
    x, idx = buf.sample(8, generator=g)
    assert sorted(idx.tolist()) == list(range(8))  # PCD: every chain exactly once
    buf.update(idx, torch.arange(16, dtype=torch.float32).reshape(8, 2))
    assert buf.data[idx[3]].tolist() == [6.0, 7.0]
    other = ReplayBuffer(8, lambda n, gen: torch.ones((n, 2)), generator=g)
    other.load_state_dict(buf.state_dict())
    assert torch.equal(other.data, buf.data)
    with pytest.raises(ValueError, match="1..8"):
        buf.sample(9, generator=g)
    with pytest.raises(ValueError, match="shape"):
        buf.update(idx, torch.zeros(8, 3))


def test_where_chains_start():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, generator=g)
    assert torch.equal(start_negatives("cd", x, noise=_noise)[0], x)
    x0, idx = start_negatives("short-run", x, noise=_noise, generator=g)
    assert idx is None and bool((x0 >= 100).all())
    buf = ReplayBuffer(5, lambda n, gen: torch.zeros((n, 2)), reinit_prob=0.0)
    x0, idx = start_negatives("pcd", x, noise=_noise, buffer=buf, generator=g)
    assert torch.equal(x0, torch.zeros(5, 2)) and idx.shape == (5,)
    with pytest.raises(ValueError, match="needs a ReplayBuffer"):
        start_negatives("buffer", x, noise=_noise)
    with pytest.raises(ValueError, match="unknown method"):
        start_negatives("gibbs", x, noise=_noise)
