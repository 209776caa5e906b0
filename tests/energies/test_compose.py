"""Products of experts, mixtures and tempering against closed forms."""

from __future__ import annotations

import math

import torch
from torch import nn

import ebmlab
from ebmlab.energies import compose, targets


def gauss(mu, var):
    mu = torch.tensor(mu, dtype=torch.float64)

    def energy(x):  # unnormalised N(mu, var I)
        return 0.5 * ((x - mu) ** 2).sum(1) / var

    return energy


def test_product_of_gaussians_is_the_precision_weighted_gaussian():
    # Per coordinate x^2/2 + (x-2)^2/2 = (x-1)^2 + 1: the product is N(1, 1/2) and
    # Z = sqrt(pi) e^-1 per coordinate (completing the square).
    prod = compose.product(gauss([0.0, 0.0], 1.0), gauss([2.0, 2.0], 1.0))
    bounds = ((-7.0, 9.0), (-7.0, 9.0))
    log_z = float(ebmlab.log_partition(prod, bounds, 512))
    expected = 2 * (0.5 * math.log(math.pi) - 1.0)
    assert abs(log_z - expected) < 1e-6
    x = torch.randn(10, 2, dtype=torch.float64)
    e, s = ebmlab.energy_and_score(prod, x)
    assert torch.allclose(s, -2 * (x - 1.0))


def test_plus_operator_on_targets_and_nested_products_flatten():
    a, b, c = targets.get("standard"), targets.get("banana"), targets.get("donut")
    p = a + b + c
    assert isinstance(p, compose.Product) and len(p.parts) == 3
    x = torch.randn(6, 2, dtype=torch.float64)
    assert torch.allclose(p(x), a(x) + b(x) + c(x))


def test_mixture_energy_and_analytic_score_match_autograd():
    mix = ebmlab.mixture(gauss([-2.0, 0.0], 0.5), gauss([2.0, 1.0], 1.5), weights=[0.3, 0.7])
    x = torch.randn(20, 2, dtype=torch.float64) * 2
    e, s = mix.energy_and_score(x)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mix(xg).sum(), xg)
    assert torch.allclose(e, mix(x)) and torch.allclose(s, -g)
    # weights: E = -log(w1 exp(-E1) + w2 exp(-E2))
    manual = -torch.log(0.3 * torch.exp(-gauss([-2.0, 0.0], 0.5)(x)) + 0.7 * torch.exp(-gauss([2.0, 1.0], 1.5)(x)))
    assert torch.allclose(e, manual)


def test_tempered_gaussian_variance_scales_with_temperature():
    t = ebmlab.tempered(gauss([0.0, 0.0], 1.0), 4.0)
    # exp(-|x|^2/(2*4)) is N(0, 4 I): log Z = log(2 pi 4)
    assert abs(float(ebmlab.log_partition(t, ((-20, 20), (-20, 20)), 512)) - math.log(8 * math.pi)) < 1e-6
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.allclose(ebmlab.score(t, x), -x / 4)


def test_trainable_experts_are_registered_parameters():
    net1, net2 = nn.Linear(2, 1), nn.Linear(2, 1)
    prod = compose.product(lambda x: net1(x).squeeze(1), net2)
    assert len(list(prod.parameters())) == 2  # only the nn.Module expert is registered


def test_bad_compose_arguments():
    import pytest

    with pytest.raises(ValueError, match="weights"):
        ebmlab.mixture(gauss([0.0, 0.0], 1.0), gauss([1.0, 1.0], 1.0), weights=[1.0])
    with pytest.raises(ValueError, match="temperature"):
        ebmlab.tempered(gauss([0.0, 0.0], 1.0), -1.0)
    with pytest.raises(TypeError, match="not callable"):
        ebmlab.product(gauss([0.0, 0.0], 1.0), 3)
    # A list of energies where they go one by one (as np.concatenate takes them) is told how to pass them.
    parts = [gauss([0.0, 0.0], 1.0), gauss([1.0, 1.0], 1.0)]
    with pytest.raises(TypeError, match=r"energy #0 is not callable: list; pass the energies as separate "
                                        r"arguments, mixture\(\*energies"):
        ebmlab.mixture(parts, weights=[0.5, 0.5])
    assert isinstance(ebmlab.mixture(*parts, weights=[0.5, 0.5]), compose.Mixture)
