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
