"""HMC: the leapfrog's energy error is O(eps^2); trajectories are recorded on request."""

from __future__ import annotations

import math

import torch

from ebmlab.energies import targets
from ebmlab.samplers import HMC


def mean_abs_energy_error(eps: float, length: float = 1.0) -> float:
    target = targets.get("banana")
    g = torch.Generator().manual_seed(0)
    x = target.sample(4000, generator=g, dtype=torch.float64)
    hmc = HMC(step_size=eps, num_leapfrog=round(length / eps))
    _, info = hmc.step(target, hmc.init(target, x), generator=g)
    return float(info.energy_error.abs().mean())


def test_energy_error_is_second_order():
    # Same trajectory length, eps halved: the global error of the leapfrog
    # (a second-order integrator) shrinks by 4 (Neal 2011, sec. 5.2.3.3).
    e1, e2, e3 = (mean_abs_energy_error(eps) for eps in (0.04, 0.02, 0.01))
    order12 = math.log2(e1 / e2)
    order23 = math.log2(e2 / e3)
    assert 1.8 < order12 < 2.2 and 1.8 < order23 < 2.2, (e1, e2, e3)


def test_trajectory_recorded_on_request():
    target = targets.get("standard")
    g = torch.Generator().manual_seed(0)
    hmc = HMC(step_size=0.1, num_leapfrog=7, record_trajectory=True)
    state = hmc.init(target, torch.zeros((5, 2)))
    _, info = hmc.step(target, state, generator=g)
    assert info.trajectory.shape == (8, 5, 2)
    assert torch.equal(info.trajectory[-1], info.proposal)


def test_diagonal_mass_matrix_samples_the_same_law():
    """A mass matrix changes the dynamics, not the invariant law."""
    import ebmlab
    from helpers import assert_moments_match

    target = targets.get("banana")
    g = torch.Generator().manual_seed(5)
    x0 = target.sample(500, generator=g, dtype=torch.float64)
    hmc = HMC(step_size=0.1, num_leapfrog=10, mass=torch.tensor([0.5, 2.0]))
    trace = ebmlab.sample(target, hmc, x0, 150, generator=g)
    assert_moments_match(trace.samples, target.sample(400_000, generator=g, dtype=torch.float64), label="HMC mass")


def _leapfrog_matrix(eps: float, s2: float, m: float, steps: int) -> torch.Tensor:
    """The leapfrog on E = x^2 / (2 s2) with mass m is linear: (x, p) -> A^L (x, p) (Neal 2011, eqs. 5.18-5.20)."""
    kick = torch.tensor([[1.0, 0.0], [-0.5 * eps / s2, 1.0]], dtype=torch.float64)  # p += eps/2 * (-x / s2)
    drift = torch.tensor([[1.0, eps / m], [0.0, 1.0]], dtype=torch.float64)  # x += eps * p / m
    return torch.linalg.matrix_power(kick @ drift @ kick, steps)


def test_leapfrog_and_accept_against_the_closed_form_with_a_non_unit_mass():
    """HMC.transition on a 1-D Gaussian with fixed noise and log u, against the leapfrog's matrix and
    H = E + p^2 / (2 m): ignoring the mass in the position update, the kinetic energy or the momentum draw fails."""
    s2, m, eps, steps = 2.0, 3.0, 0.4, 7
    energy = lambda x: 0.5 * (x**2).sum(1) / s2  # noqa: E731 - plain callable: autograd scores
    x0 = torch.tensor([[1.3], [-0.4], [2.2]], dtype=torch.float64)
    z = torch.tensor([[0.7], [-1.1], [0.2]], dtype=torch.float64)
    hmc = HMC(step_size=eps, num_leapfrog=steps, mass=m)
    state = hmc.init(energy, x0)
    p0 = z * math.sqrt(m)  # p ~ N(0, M)
    out = (_leapfrog_matrix(eps, s2, m, steps) @ torch.cat((x0, p0), 1).T).T
    x1, p1 = out[:, :1], out[:, 1:]
    h0 = x0[:, 0] ** 2 / (2 * s2) + p0[:, 0] ** 2 / (2 * m)
    h1 = x1[:, 0] ** 2 / (2 * s2) + p1[:, 0] ** 2 / (2 * m)
    log_alpha = h0 - h1
    log_u = torch.stack((log_alpha[0] - 1e-3, log_alpha[1] + 1e-3, torch.tensor(-50.0, dtype=torch.float64)))
    new, info = hmc.transition(energy, state, z, log_u)
    torch.testing.assert_close(info.proposal, x1, rtol=0, atol=1e-12)
    torch.testing.assert_close(info.energy_error, h1 - h0, rtol=0, atol=1e-12)
    torch.testing.assert_close(info.log_acceptance, log_alpha.clamp(max=0), rtol=0, atol=1e-12)
    assert info.accepted.tolist() == [True, False, True]
    torch.testing.assert_close(new.x, torch.where(info.accepted[:, None], x1, x0))
