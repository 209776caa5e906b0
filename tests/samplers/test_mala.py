"""MALA specifics: acceptance -> 1 as eps -> 0, reproducibility, image-shaped chains, the preconditioned proposal."""

from __future__ import annotations

import math

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


# --- Preconditioned MALA (diagonal inverse mass M^-1) ---------------------------------------


def test_inverse_mass_is_validated():
    for bad in (0.0, -1.0, float("nan"), True, torch.tensor([1.0, 0.0]), torch.tensor([1.0, float("inf")])):
        with pytest.raises(ValueError, match="inverse_mass"):
            MALA(0.5, inverse_mass=bad)


def test_unit_inverse_mass_gives_the_plain_chain():
    """M^-1 = 1 (float or tensor) is the identity metric: the same chain as no metric, to rounding."""
    target = targets.get("banana")

    def run(sampler):
        g = torch.Generator().manual_seed(3)
        x0 = torch.randn((50, 2), generator=g, dtype=torch.float64)
        return ebmlab.sample(target, sampler, x0, 20, generator=g).samples

    plain = run(MALA(0.4))
    torch.testing.assert_close(run(MALA(0.4, inverse_mass=1.0)), plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(run(MALA(0.4, inverse_mass=torch.ones(2))), plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("inverse_mass", [3.0, torch.tensor([3.0])], ids=["float", "tensor"])
def test_preconditioned_mh_ratio_by_hand(inverse_mass):
    """One step on N(0, sigma^2) in 1-D with fixed z and log u against the hand-computed
    log alpha = log pi(x') q(x | x') - log pi(x) q(x' | x),  q(b | a) = N(b; a + eps^2/2 m s(a), eps^2 m)
    (Girolami & Calderhead 2011, constant metric M = 1/m)."""
    sigma, eps, m = 2.0, 0.7, 3.0

    def energy(x):
        return 0.5 * (x[:, 0] / sigma) ** 2

    def s(a):
        return -a / sigma**2

    def log_q(b, a):
        mean = a + 0.5 * eps**2 * m * s(a)
        return -((b - mean) ** 2) / (2 * eps**2 * m) - 0.5 * math.log(2 * math.pi * eps**2 * m)

    xs, zs = [-1.0, 0.5, 2.0, 4.0], [0.3, -1.2, 0.8, 2.5]
    log_us = [-0.05, -0.4, -1e-9, -2.0]
    mala = MALA(eps, inverse_mass=inverse_mass)
    x = torch.tensor(xs, dtype=torch.float64).unsqueeze(1)
    state = mala.init(energy, x)
    new, info = mala.transition(energy, state, torch.tensor(zs, dtype=torch.float64).unsqueeze(1),
                                torch.tensor(log_us, dtype=torch.float64))
    for i, (x0, z, log_u) in enumerate(zip(xs, zs, log_us)):
        x1 = x0 + 0.5 * eps**2 * m * s(x0) + eps * math.sqrt(m) * z
        log_alpha = (-0.5 * (x1 / sigma) ** 2 + log_q(x0, x1)) - (-0.5 * (x0 / sigma) ** 2 + log_q(x1, x0))
        assert float(info.proposal[i, 0]) == pytest.approx(x1, abs=1e-12)
        assert float(info.log_acceptance[i]) == pytest.approx(min(0.0, log_alpha), abs=1e-12)
        assert bool(info.accepted[i]) == (log_u < log_alpha)
        assert float(new.x[i, 0]) == pytest.approx(x1 if log_u < log_alpha else x0, abs=1e-12)
    assert info.accepted.any() and not info.accepted.all()  # the fixed draws exercise both outcomes


def test_preconditioned_mala_is_exact_on_an_anisotropic_gaussian():
    """Scales 0.1 and 3 with correlation 0.6, M^-1 = the marginal variances: from exact draws,
    the trace's first and second moments match the exact ones within 4 SE (SE from bulk ESS)."""
    from helpers import assert_moments_match

    sd1, sd2, rho = 0.1, 3.0, 0.6
    target = targets.Gaussian([1.0, -2.0], [[sd1**2, rho * sd1 * sd2], [rho * sd1 * sd2, sd2**2]])
    g = torch.Generator().manual_seed(11)
    x0 = target.sample(500, generator=g, dtype=torch.float64)
    mala = MALA(0.9, inverse_mass=torch.tensor([sd1**2, sd2**2]))
    trace = ebmlab.sample(target, mala, x0, 300, generator=g)
    assert 0.3 < float(trace.acceptance_rate.mean()) < 0.95
    assert_moments_match(trace.samples, target.sample(400_000, generator=g, dtype=torch.float64),
                         label="preconditioned MALA")
