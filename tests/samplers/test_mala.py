"""MALA specifics: acceptance -> 1 as eps -> 0, reproducibility, image-shaped chains."""

from __future__ import annotations

import pytest
import torch

import ebmlab
from ebmlab.energies import targets
from ebmlab.samplers import HMC, MALA, Langevin, RandomWalkMH


def test_acceptance_tends_to_one_as_step_shrinks():
    target = targets.get("banana")
    g = torch.Generator().manual_seed(0)
    x0 = target.sample(2000, generator=g, dtype=torch.float64)
    rates = []
    for eps in (1.0, 0.3, 0.1, 0.03, 0.01):
        trace = ebmlab.sample(target, MALA(step_size=eps), x0, 20, generator=g)
        rates.append(float(trace.acceptance_rate.mean()))
    assert rates == sorted(rates), rates
    # MALA's rejection rate is O(eps^3) per step (Roberts & Rosenthal 1998).
    assert rates[-1] > 0.999, rates


@pytest.mark.parametrize("sampler", [MALA(0.3), Langevin(0.3), HMC(0.1, 5), RandomWalkMH(0.5)], ids=repr)
def test_same_seed_same_samples(sampler):
    target = targets.get("banana")

    def run():
        g = torch.Generator().manual_seed(42)
        x0 = torch.randn((64, 2), generator=g)
        return ebmlab.sample(target, sampler, x0, 30, generator=g).samples

    assert torch.equal(run(), run())


def test_image_shaped_chains_and_moments():
    """Chains of (1, 4, 4) images on a Gaussian energy: shapes hold, moments right."""
    sd = 0.5

    def energy(x):
        return 0.5 * (x / sd).pow(2).flatten(1).sum(1)

    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros((500, 1, 4, 4), dtype=torch.float64)
    trace = ebmlab.sample(energy, MALA(step_size=0.4), x0, 300, burn_in=100, thin=2, generator=g)
    assert trace.samples.shape == (100, 500, 1, 4, 4)
    assert trace.energies.shape == (100, 500)
    assert trace.acceptance_rate.shape == (500,)
    ess = torch.as_tensor(ebmlab.evaluation.ess_bulk(trace.samples))
    se = sd / ess.sqrt()
    assert torch.all(trace.samples.mean(dim=(0, 1)).abs() <= 4 * se)


def test_mala_rejects_proposals_with_infinite_energy():
    """+inf energy is zero density: such proposals are rejected, the chain stays finite."""

    def energy(x):
        e = 0.5 * (x**2).sum(1)
        return torch.where(x[:, 0] > 0.5, torch.full_like(e, torch.inf), e)

    g = torch.Generator().manual_seed(0)
    trace = ebmlab.sample(energy, MALA(step_size=0.5), torch.zeros((200, 2)), 200, generator=g)
    assert float(trace.samples[..., 0].max()) <= 0.5
