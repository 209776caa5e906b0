"""dsm_loss against the Gaussian closed form.

For data N(m, C) the marginal is p_t = N(a m, C_t), C_t = a^2 C + std^2 I, and
the true score is s* = -C_t^-1 (x - a m). At s*, Tweedie's E[z | x(t)] = -std s*
gives, at a fixed t,

    E 1/2 ||std s* + z||^2 = 1/2 (d - std^2 tr C_t^-1)          (weighting "default", lambda = std^2)
    E 1/2 g^2 ||s* + z / std||^2 = g^2 / std^2 * the same       (weighting "likelihood", lambda = g^2)

and the gradient with respect to a parameter theta of s = s* + theta h vanishes
at theta = 0 for every h. Expectations are checked within 4 SE, the SE from
independent replicate batches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ebmlab import sde
from ebmlab.energies import targets
from ebmlab.energies.score_nets import ScoreConvNet, ScoreMLP
from helpers import Z

DT = torch.float64
MEAN = torch.tensor([1.0, -2.0], dtype=DT)
COV = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=DT)
SDES = [sde.VPSDE(), sde.VESDE(0.01, 50.0), sde.SubVPSDE()]


def analytic(s, t, weighting):
    """The loss's expectation at the true score, per time ``t`` (a tensor of times)."""
    a, std = s.marginal(t)
    lam = torch.linalg.eigvalsh(COV)
    tr = (1.0 / (a[:, None] ** 2 * lam + std[:, None] ** 2)).sum(1)
    value = 0.5 * (2 - std**2 * tr)
    return value * (s.diffusion(t) / std) ** 2 if weighting == "likelihood" else value


def replicate(fn, reps):
    values = torch.tensor([float(fn(r)) for r in range(reps)], dtype=DT)
    return float(values.mean()), float(values.std()) / math.sqrt(reps)


@pytest.mark.parametrize("s", SDES, ids=repr)
@pytest.mark.parametrize("weighting", ["default", "likelihood"])
def test_loss_at_the_true_score_equals_its_closed_form_at_given_times(s, weighting):
    data = targets.Gaussian(MEAN, COV)
    score = sde.exact_score(data, s)
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0.02, 1.0, 10, dtype=DT).repeat_interleave(400)

    def one(_):
        x = data.sample(t.shape[0], generator=g, dtype=DT)
        return sde.dsm_loss(score, s, x, t=t, weighting=weighting, generator=g)[0]

    got, se = replicate(one, 20)
    expected = float(analytic(s, t, weighting).mean())
    assert abs(got - expected) <= Z * se, f"{weighting}: loss {got:.5f} vs closed form {expected:.5f} (SE {se:.5f})"


@pytest.mark.parametrize("s", SDES, ids=repr)
def test_loss_with_drawn_times_is_the_time_average(s):
    """t ~ U(eps, T): the loss's expectation is the closed form averaged over time (Gauss-Legendre)."""
    data = targets.Gaussian(MEAN, COV)
    score = sde.exact_score(data, s)
    g = torch.Generator().manual_seed(1)
    eps = 1e-5

    def one(_):
        return sde.dsm_loss(score, s, data.sample(4000, generator=g, dtype=DT), generator=g, eps=eps)[0]

    got, se = replicate(one, 20)
    nodes, weights = (torch.as_tensor(v, dtype=DT) for v in np.polynomial.legendre.leggauss(200))
    u = eps + (s.T - eps) * 0.5 * (nodes + 1)
    expected = float(0.5 * (weights * analytic(s, u, "default")).sum())
    assert abs(got - expected) <= Z * se, f"loss {got:.5f} vs time-averaged closed form {expected:.5f} (SE {se:.5f})"


@pytest.mark.parametrize("s", SDES, ids=repr)
@pytest.mark.parametrize("weighting", ["default", "likelihood"])
def test_expected_gradient_vanishes_at_the_true_score(s, weighting):
    """d/dtheta of the loss of s* + theta h at theta = 0 has mean 0 (h(x, t) = x, not a score of anything special)."""
    data = targets.Gaussian(MEAN, COV)
    exact = sde.exact_score(data, s)
    theta = torch.zeros((), dtype=DT, requires_grad=True)

    def score(x, t):
        return exact(x, t) + theta * x

    g = torch.Generator().manual_seed(2)

    def one(_):
        # eps = 0.01: likelihood weighting's g^2 / std^2 ~ 1 / t makes the t -> 0 end heavy-tailed
        loss, _ = sde.dsm_loss(score, s, data.sample(2000, generator=g, dtype=DT), generator=g, weighting=weighting,
                               eps=1e-2)
        (grad,) = torch.autograd.grad(loss, theta)
        return grad

    got, se = replicate(one, 30)
    assert abs(got) <= Z * se, f"{weighting}: mean gradient at the truth {got:.4f} (SE {se:.4f})"
    assert se > 0


def test_metrics_are_detached_scalars_and_networks_train():
    vp = sde.VPSDE()
    torch.manual_seed(0)  # network initialisation only
    net = ScoreMLP(2, hidden=(16,), noise_conditional=True)
    score = sde.score_model(net, vp)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    loss, metrics = sde.dsm_loss(score, vp, x, generator=torch.Generator().manual_seed(4))
    assert loss.dim() == 0 and loss.requires_grad
    for key in ("loss", "t_mean", "scaled_score_norm"):
        assert metrics[key].dim() == 0 and not metrics[key].requires_grad
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    again, _ = sde.dsm_loss(score, vp, x, generator=torch.Generator().manual_seed(4))
    assert float(again.detach()) == float(loss.detach())
    conv = sde.score_model(ScoreConvNet(in_channels=1, image_size=8, width=8), sde.VESDE())
    img_loss, _ = sde.dsm_loss(conv, sde.VESDE(), torch.rand(4, 1, 8, 8) * 2 - 1, weighting="likelihood",
                               generator=torch.Generator().manual_seed(5))
    assert torch.isfinite(img_loss)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(weighting="uniform"), "weighting"),
        (dict(eps=0.0), "eps"),
        (dict(eps=1.0), "eps"),
        (dict(t=torch.full((3,), 0.5)), "t"),
        (dict(t=torch.full((4,), 2.0)), "t"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    vp = sde.VPSDE()
    score = sde.exact_score(targets.standard(2), vp)
    with pytest.raises(ValueError, match=name):
        sde.dsm_loss(score, vp, torch.zeros(4, 2), **kwargs)
